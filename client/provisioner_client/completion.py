"""Shell completion for `provisionctl`, written from its own argument parser, so it can
never fall behind the commands: `provisionctl completion bash|zsh|fish`.

It completes commands, each command's flags, and the values of flags that have a fixed
set of choices (`-o`, `--status`, `--role`, ...).
"""

from __future__ import annotations

import argparse
import shlex

SHELLS = ("bash", "zsh", "fish")


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse has no public accessor for subparsers
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _flags(parser: argparse.ArgumentParser) -> list[str]:
    return [flag for action in parser._actions for flag in action.option_strings]


def _choices(parser: argparse.ArgumentParser) -> dict[str, list[str]]:
    return {
        flag: [str(c) for c in action.choices]
        for action in parser._actions
        if action.option_strings and action.choices
        for flag in action.option_strings
    }


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of `shell` for `parser`'s program."""
    if shell == "fish":
        return _fish(parser)
    bash = _bash(parser)
    if shell == "zsh":
        # zsh runs bash completion functions through bashcompinit.
        return "autoload -U +X bashcompinit && bashcompinit\n" + bash
    return bash


def _bash(parser: argparse.ArgumentParser) -> str:
    prog = parser.prog
    name = "_" + prog.replace("-", "_")
    commands = _commands(parser)
    values = {**_choices(parser), **{f: c for sub in commands.values() for f, c in _choices(sub).items()}}
    lines = [
        f"{name}() {{",
        '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" opts=""',
        '    case "$prev" in',
        *(
            f"        {flag}) opts={shlex.quote(' '.join(choices))} ;;"
            for flag, choices in sorted(values.items())
        ),
        "    esac",
        '    if [ -z "$opts" ]; then',
        '        case "${COMP_WORDS[1]}" in',
        *(
            f"            {command}) opts={shlex.quote(' '.join(_flags(sub)))} ;;"
            for command, sub in commands.items()
        ),
        f"            *) opts={shlex.quote(' '.join([*commands, *_flags(parser)]))} ;;",
        "        esac",
        "    fi",
        '    if [ "$COMP_CWORD" -eq 1 ] && [ "${cur#-}" = "$cur" ]; then',
        f"        opts={shlex.quote(' '.join(commands))}",
        "    fi",
        '    COMPREPLY=($(compgen -W "$opts" -- "$cur"))',
        "}",
        f"complete -F {name} {prog}",
    ]
    return "\n".join(lines) + "\n"


def _fish(parser: argparse.ArgumentParser) -> str:
    prog = parser.prog
    commands = _commands(parser)
    lines = [f"complete -c {prog} -f"]
    for command, sub in commands.items():
        about = (sub.description or "").split(". ")[0].replace("'", "")
        lines.append(f"complete -c {prog} -n __fish_use_subcommand -a {command} -d '{about}'")
        chosen = _choices(sub)
        for action in sub._actions:
            longs = [f for f in action.option_strings if f.startswith("--")]
            if not longs or longs[0] == "--help":
                continue
            values = chosen.get(longs[0])
            extra = f" -x -a {shlex.quote(' '.join(values))}" if values else ""
            lines.append(
                f"complete -c {prog} -n '__fish_seen_subcommand_from {command}' -l {longs[0][2:]}{extra}"
            )
    return "\n".join(lines) + "\n"
