"""``python -m moderation …``: the CLI (moderation/cli.py), e.g. as a ``ray job submit`` entrypoint."""

from moderation.cli import main

main()
