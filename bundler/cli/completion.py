"""Shell completion for bash and zsh, by argcomplete: commands, options, and the built-in profiles'
names where a profile is asked for. ``bundler completion bash|zsh`` prints the script to source."""

from __future__ import annotations

import argparse
import os

from bundler.build.profile import builtin_names
from bundler.cli.common import EXIT_OK, Subcommand, say

SHELLS = ("bash", "zsh")


def complete(parser: argparse.ArgumentParser) -> None:
    """Answer the shell's completion request and exit, when this run is one (argcomplete's protocol)."""
    if "_ARGCOMPLETE" in os.environ:
        import argcomplete
        argcomplete.autocomplete(parser, default_completer=argcomplete.completers.FilesCompleter())


def profile_names(prefix: str, **_kwargs: object) -> list[str]:
    """Built-in profile names, then profile files, that start with ``prefix``."""
    import argcomplete

    names = [name for name in builtin_names() if name.startswith(prefix)]
    return names + [path for path in argcomplete.completers.FilesCompleter(("yaml", "yml"))(prefix)
                    if path not in names]


def cmd_completion(args: argparse.Namespace) -> int:
    import argcomplete
    say(argcomplete.shellcode(["bundler"], shell=args.shell).rstrip("\n"))
    return EXIT_OK


HELP = ("Print the script that completes bundler's commands, options and built-in profile names in bash "
        "or zsh. Source it from your shell's startup file: eval \"$(bundler completion bash)\" in ~/.bashrc, "
        "or eval \"$(bundler completion zsh)\" in ~/.zshrc.")


def add_completion(command: Subcommand) -> None:
    p = command.parser(cmd_completion, HELP)
    p.add_argument("shell", choices=SHELLS, help="the shell")
