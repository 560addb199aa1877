"""The balancer's options model: the command line made from it keeps every flag and default
users and manifests rely on, each front end gets its own listen default, and a bad value is
refused in one line with exit status 2."""

from __future__ import annotations

from llmtraffic.balancer.command import front_end_options
from llmtraffic.balancer.options import BalancerCommand, ExtProcOptions, ProxyOptions
from llmtraffic.cli import build_parser, main
from llmtraffic.contracts.flags import from_flags

#: `llmtraffic balancer` with no flags, as parsed before the options model existed.
DEFAULTS = {
    "config": [], "pods_file": None, "kubernetes": False, "namespace": None,
    "mode": "proxy", "listen": None, "health_listen": "0.0.0.0:9003", "policy": "llm",
    "policy_config": None, "access_log": None, "scrape_interval": 0.25,
    "scrape_timeout": 1.0, "api_key_env": "LLMTRAFFIC_API_KEY",
    "metrics_token_env": "LLMTRAFFIC_METRICS_TOKEN", "max_body_bytes": 8 * 1024 * 1024,
    "max_header_bytes": 8190, "retries": 2, "idle_timeout": 120.0, "breaker_failures": 5,
    "breaker_cooldown": 10.0, "max_label_values": 200, "seed": None, "loop": "auto"}


def parse(*argv: str):
    return build_parser().parse_args(["balancer", *argv])


def test_every_flag_and_default_is_kept() -> None:
    args = vars(parse())
    assert {k: args.get(k, "missing") for k in DEFAULTS} == DEFAULTS


def test_each_front_end_gets_its_options_and_listen_default(monkeypatch) -> None:
    monkeypatch.setenv("KEY_VAR", "k")
    args = parse("--api-key-env", "KEY_VAR", "--retries", "0", "--seed", "3")
    proxy = front_end_options(from_flags(BalancerCommand, args), args)
    assert isinstance(proxy, ProxyOptions)
    assert (proxy.listen, proxy.api_key, proxy.metrics_token, proxy.retries, proxy.seed) == \
        ("0.0.0.0:8080", "k", None, 0, 3)
    args = parse("--mode", "extproc", "--health-listen", "127.0.0.1:0")
    picker = front_end_options(from_flags(BalancerCommand, args), args)
    assert isinstance(picker, ExtProcOptions)
    assert (picker.listen, picker.health_listen) == ("0.0.0.0:9002", "127.0.0.1:0")
    args = parse("--mode", "extproc", "--listen", "127.0.0.1:7")
    assert front_end_options(from_flags(BalancerCommand, args), args).listen == "127.0.0.1:7"


def test_a_bad_value_is_one_line_and_exit_status_2(capsys) -> None:
    for argv, said in ((["--breaker-failures", "0"], "--breaker-failures 0: must be >= 1"),
                       (["--scrape-interval", "0"], "--scrape-interval 0: must be >= 0.05"),
                       (["--listen", "8080"], "--listen 8080: give host:port"),
                       (["--listen", "localhost:99999"],
                        "--listen localhost:99999: the port must be 1-65535")):
        assert main(["balancer", "--kubernetes", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"llmtraffic balancer: {said}") and err.count("\n") == 1, err


def test_extproc_without_grpc_names_the_extra_in_one_line(tmp_path, monkeypatch,
                                                          capsys) -> None:
    import sys
    from pathlib import Path

    monkeypatch.setitem(sys.modules, "grpc", None)  # as if the extra were not installed
    monkeypatch.delitem(sys.modules, "llmtraffic.balancer.extproc", raising=False)
    pods = tmp_path / "pods.yaml"
    pods.write_text('pods:\n- {name: a, address: "127.0.0.1:9", labels: '
                    '{app: vllm-llama2-7b-pool}}\n')
    seed = sorted(str(p) for p in (Path(__file__).parents[2] / "deploy" / "seed").glob("*.yaml"))
    assert main(["balancer", "--mode", "extproc", "--config", *seed,
                 "--pods-file", str(pods)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--mode extproc needs gRPC" in err and \
        "pip install 'llmtraffic[extproc]'" in err, err
