"""An options model on the command line: one flag per field (name, help, default shown),
parsed arguments back through the model, and a refused value told in one line."""

from __future__ import annotations

import argparse
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field

from llmtraffic.contracts.flags import NOT_A_FLAG, Flag, OptionError, add_flags, from_flags
from llmtraffic.contracts.options import Listen, ScrapeInterval


class Knobs(BaseModel):
    listen: Listen = "0.0.0.0:1234"
    scrape_interval: ScrapeInterval = 0.5
    retries: int = Field(2, ge=0, description="other pods tried")
    mode: Literal["a", "b"] = Field("a", description="which one")
    files: Annotated[list[str], Flag(name="--file", metavar="FILE")] = Field(
        [], description="files to read")
    verbose: bool = Field(False, description="say more")
    secret: Annotated[str | None, NOT_A_FLAG] = None
    ratio: float = Field(0.5, description="50% by default")


class Other(BaseModel):
    retries: int = Field(2, description="declared again: the first model's flag is used")
    grace: float = Field(1.0, gt=0, description="seconds")


class Clash(BaseModel):
    retries: int = 9


def parser(*models: type[BaseModel]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="t")
    add_flags(p, *models)
    return p


def test_each_field_is_one_flag_with_its_help_and_default() -> None:
    help_ = parser(Knobs).format_help()
    for text in ("--listen HOST:PORT", "--scrape-interval", "--retries", "{a,b}",
                 "--file FILE [FILE ...]", "--verbose", "other pods tried (default: 2)",
                 "50% by default (default: 0.5)"):
        assert text in help_, text
    assert "--secret" not in help_ and "--files" not in help_
    args = parser(Knobs).parse_args([])
    assert (args.listen, args.retries, args.mode, args.file, args.verbose) == \
        ("0.0.0.0:1234", 2, "a", [], False)


def test_arguments_go_back_through_the_model() -> None:
    args = parser(Knobs).parse_args(["--file", "x", "y", "--retries", "0", "--verbose",
                                     "--mode", "b"])
    knobs = from_flags(Knobs, args, secret="s")
    assert (knobs.files, knobs.retries, knobs.verbose, knobs.mode, knobs.secret) == \
        (["x", "y"], 0, True, "b", "s")
    assert knobs.scrape_interval == 0.5


def test_a_refused_value_is_one_line_naming_flag_and_value() -> None:
    p = parser(Knobs)
    with pytest.raises(OptionError, match=r"^--scrape-interval 0: must be >= 0.05$"):
        from_flags(Knobs, p.parse_args(["--scrape-interval", "0"]))
    with pytest.raises(OptionError) as e:
        from_flags(Knobs, p.parse_args(["--retries", "-1", "--listen", "nowhere"]))
    assert str(e.value) == ("--listen nowhere: give host:port, e.g. 0.0.0.0:9100; "
                            "--retries -1: must be >= 0")


def test_models_sharing_a_field_share_its_flag() -> None:
    p = parser(Knobs, Other)
    args = p.parse_args(["--retries", "4", "--grace", "2"])
    assert from_flags(Other, args).retries == 4 and from_flags(Knobs, args).retries == 4
    with pytest.raises(ValueError, match=r"Clash.retries: default 9 differs from 2"):
        parser(Knobs, Clash)  # its flag would show, and give, Knobs' default


def test_a_port_out_of_range_is_refused_not_bound_elsewhere() -> None:
    p = parser(Knobs)
    with pytest.raises(OptionError, match=r"^--listen localhost:99999: the port must be "
                       r"1-65535 \(0 picks a free one\)$"):
        from_flags(Knobs, p.parse_args(["--listen", "localhost:99999"]))
    assert from_flags(Knobs, p.parse_args(["--listen", "127.0.0.1:0"])).listen == \
        "127.0.0.1:0"


class Tristate(BaseModel):
    serve: bool | None = Field(None, description="keep serving")


def test_an_optional_bool_is_a_yes_no_flag_left_to_the_program_when_absent() -> None:
    p = parser(Tristate)
    assert "--serve, --no-serve" in p.format_help()
    assert [from_flags(Tristate, p.parse_args(a)).serve
            for a in ([], ["--serve"], ["--no-serve"])] == [None, True, False]
