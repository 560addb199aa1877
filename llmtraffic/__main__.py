"""`python -m llmtraffic` runs the command line."""
import sys

from llmtraffic.cli import main

sys.exit(main())
