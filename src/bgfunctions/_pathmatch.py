"""Run a path pattern's regular expression in time linear in the path's length.

Python's ``re`` backtracks: ``/(.*)/(.*)/(.*)\\.json`` (URLPattern's ``/*/*/*.json``) takes
seconds on a long path that does not match, and nested quantifiers take exponential time. The
pattern compiler still writes the standard's regular expression (so that its meaning is the
standard's), and this module runs it differently:

- the expression is parsed by the standard library's own parser (``re._parser``, ``sre_parse``
  before 3.11) and compiled to a small program of instructions (fixed text, one character,
  split, jump, save a group boundary, an assertion, match);
- the program runs as a backtracking search in the order a backtracking engine takes, so the
  first match found, and its groups, are the ones ``re`` (and JavaScript) would find; but every
  (instruction, position) pair is tried at most once. A pair reached a second time failed the
  first time: nothing it could match depends on how it was reached, since the expressions have
  no backreferences. The work is therefore at most ``len(program) * (len(path) + 1)`` steps.

Lookarounds (from a custom group) run as sub-programs with the same rule at each position that
reaches them, so a pattern with one is at worst quadratic, never exponential.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["MAX_PROGRAM", "Program", "ProgramTooLarge", "compile_program", "nested_quantifier"]

# The parser is private but stable across 3.10-3.13, and it is the only one that parses
# exactly what ``re.compile`` accepts. ``sre_parse`` warns on import from 3.11 on.
_NEW = sys.version_info >= (3, 11)
_P: Any = importlib.import_module("re._parser" if _NEW else "sre_parse")
_C: Any = importlib.import_module("re._constants" if _NEW else "sre_constants")

MAX_PROGRAM = 1_000
"""The most instructions a pattern compiles to (a counted repeat such as ``[ab]{5000}`` is
spelled out); a larger pattern is refused when it is loaded. The matcher's work is at most
this times the path's length: the cap keeps that product, and its memory, small."""

_STR, _CHAR, _ANY, _NOT_SLASH, _SPLIT, _JMP, _SAVE, _BEGIN, _END, _LOOK, _MATCH = range(11)
_SLASH = ord("/")

_CATEGORIES = {
    "CATEGORY_DIGIT": r"\d",
    "CATEGORY_NOT_DIGIT": r"\D",
    "CATEGORY_SPACE": r"\s",
    "CATEGORY_NOT_SPACE": r"\S",
    "CATEGORY_WORD": r"\w",
    "CATEGORY_NOT_WORD": r"\W",
}


class ProgramTooLarge(ValueError):
    """The expression needs more than :data:`MAX_PROGRAM` instructions, or uses a construct
    that the linear matcher cannot run (the pattern compiler rejects neither otherwise)."""


@dataclass(frozen=True, slots=True)
class Program:
    """Instructions ``ops[i]`` with operands ``args[i]``; ``slots`` group boundaries."""

    ops: tuple[int, ...]
    args: tuple[Any, ...]
    slots: int
    nexts: tuple[int, ...] = ()
    """Where each instruction goes on, jumps followed at compile time (no JMP ever runs)."""

    def fullmatch(self, text: str) -> tuple[list[int] | None, int]:
        """The group boundaries of the first full match (``-1`` where a group did not take
        part), or None; and the number of steps it took."""
        return _run(self, text, 0, len(text))


def compile_program(source: str, flags: int) -> Program:
    """Compile a Python regular expression (already accepted by ``re.compile``)."""
    parsed = _P.parse(source, flags)
    builder = _Builder()
    builder.emit(parsed.data, flags)
    builder.add(_MATCH, None)
    return builder.program(2 * (parsed.state.groups - 1))


def nested_quantifier(source: str, flags: int) -> bool:
    """True when a repeated part of ``source`` itself holds a repeat: ``(?:a+)+``.

    Such an expression can match one string in exponentially many ways; backtracking engines
    (JavaScript's, on Netlify) then take exponential time on a string that almost matches.
    """
    return _nested(_P.parse(source, flags).data, inside=False)


def _nested(items: Any, *, inside: bool) -> bool:
    for op, av in items:
        if op in (_C.MAX_REPEAT, _C.MIN_REPEAT):
            repeats = av[1] > 1
            if (repeats and inside) or _nested(av[2].data, inside=inside or repeats):
                return True
            continue
        if op is _C.SUBPATTERN:
            bodies = [av[3]]
        elif op is _C.BRANCH:
            bodies = list(av[1])
        elif op in (_C.ASSERT, _C.ASSERT_NOT):
            bodies = [av[1]]
        else:
            continue
        if any(_nested(body.data, inside=inside) for body in bodies):
            return True
    return False


def _class_char(code: int) -> str:
    return f"\\x{code:02x}" if code < 0x100 else f"\\U{code:08x}"


class _Builder:
    def __init__(self) -> None:
        self.ops: list[int] = []
        self.args: list[Any] = []
        # Whether the last instruction is fixed text that the next character may extend: not
        # once its successor's index has been taken as a jump target.
        self.open_text = False

    def add(self, op: int, arg: Any) -> int:
        if len(self.ops) >= MAX_PROGRAM:
            raise ProgramTooLarge(f"the pattern needs more than {MAX_PROGRAM} instructions")
        self.ops.append(op)
        self.args.append(arg)
        self.open_text = op == _STR
        return len(self.ops) - 1

    def program(self, slots: int) -> Program:
        """The instructions with every jump followed: a split goes straight to its targets'
        first real instructions, and so does the instruction before a jump."""

        def follow(pc: int) -> int:
            for _ in range(len(self.ops)):  # a cycle of jumps alone cannot be built; bounded
                if pc >= len(self.ops) or self.ops[pc] != _JMP:
                    return pc
                pc = self.args[pc]
            raise ProgramTooLarge("a cycle of jumps")

        args = list(self.args)
        for pc, op in enumerate(self.ops):
            if op == _SPLIT:
                args[pc] = (follow(args[pc][0]), follow(args[pc][1]))
        nexts = tuple(follow(pc + 1) for pc in range(len(self.ops)))
        return Program(tuple(self.ops), tuple(args), slots, nexts)

    def here(self) -> int:
        """The next instruction's index, taken as a jump target."""
        self.open_text = False
        return len(self.ops)

    def char(self, source: str, flags: int) -> None:
        matcher: Callable[[str, int], object] = re.compile(source, flags).match
        self.add(_CHAR, matcher)

    def literal(self, code: int, flags: int) -> None:
        if flags & re.IGNORECASE:
            self.char(_class_char(code), flags)
        elif self.open_text:
            self.args[-1] += chr(code)
        else:
            self.add(_STR, chr(code))

    def emit(self, items: Any, flags: int) -> None:
        for op, av in items:
            self.emit_one(op, av, flags)

    def emit_one(self, op: Any, av: Any, flags: int) -> None:
        if op is _C.LITERAL:
            self.literal(av, flags)
        elif op is _C.NOT_LITERAL:
            if av == _SLASH and not flags & re.IGNORECASE:
                self.add(_NOT_SLASH, None)
            else:
                self.char(f"[^{_class_char(av)}]", flags)
        elif op is _C.ANY:
            if flags & re.DOTALL:
                self.add(_ANY, None)
            else:
                self.char(".", flags)
        elif op is _C.IN:
            self.char(self.char_class(av), flags)
        elif op is _C.SUBPATTERN:
            group, add_flags, del_flags, body = av
            inner = (flags | add_flags) & ~del_flags
            if group is not None:
                self.add(_SAVE, 2 * (group - 1))
            self.emit(body.data, inner)
            if group is not None:
                self.add(_SAVE, 2 * (group - 1) + 1)
        elif op is _C.BRANCH:
            self.branch(av[1], flags)
        elif op in (_C.MAX_REPEAT, _C.MIN_REPEAT):
            self.repeat(av, greedy=op is _C.MAX_REPEAT, flags=flags)
        elif op is _C.AT and av is _C.AT_BEGINNING_STRING:
            self.add(_BEGIN, None)
        elif op is _C.AT and av is _C.AT_END_STRING:
            self.add(_END, None)
        elif op in (_C.ASSERT, _C.ASSERT_NOT):
            direction, body = av
            sub = _Builder()
            sub.emit(body.data, flags)
            sub.add(_MATCH, None)
            program = sub.program(0)
            width = None if direction == 1 else body.getwidth()[0]
            self.add(_LOOK, (program, width, op is _C.ASSERT_NOT))
        else:
            raise ProgramTooLarge(f"the linear matcher does not run {op} {av!r}")

    def char_class(self, items: Any) -> str:
        out = ["["]
        for op, av in items:
            if op is _C.NEGATE:
                out.append("^")
            elif op is _C.LITERAL:
                out.append(_class_char(av))
            elif op is _C.RANGE:
                out.append(f"{_class_char(av[0])}-{_class_char(av[1])}")
            elif op is _C.CATEGORY and str(av) in _CATEGORIES:
                out.append(_CATEGORIES[str(av)])
            else:
                raise ProgramTooLarge(f"the linear matcher does not run {op} {av!r} in a class")
        return "".join(out) + "]"

    def branch(self, alternatives: Any, flags: int) -> None:
        jumps: list[int] = []
        for k, alternative in enumerate(alternatives):
            split = None
            if k < len(alternatives) - 1:
                split = self.add(_SPLIT, None)
            start = self.here()
            self.emit(alternative.data, flags)
            if split is not None:
                jumps.append(self.add(_JMP, None))
                self.args[split] = (start, self.here())
        end = self.here()
        for jump in jumps:
            self.args[jump] = end

    def repeat(self, av: Any, *, greedy: bool, flags: int) -> None:
        low, high, body = av
        for _ in range(low):
            self.emit(body.data, flags)
        if high == _C.MAXREPEAT:
            loop = self.add(_SPLIT, None)
            self.emit(body.data, flags)
            self.add(_JMP, loop)
            self.args[loop] = self.order(loop + 1, self.here(), greedy)
            return
        splits: list[int] = []
        for _ in range(high - low):
            splits.append(self.add(_SPLIT, None))
            self.emit(body.data, flags)
        end = self.here()
        for split in splits:
            self.args[split] = self.order(split + 1, end, greedy)

    @staticmethod
    def order(body: int, out: int, greedy: bool) -> tuple[int, int]:
        return (body, out) if greedy else (out, body)


def _run(
    program: Program, text: str, start: int, target: int | None
) -> tuple[list[int] | None, int]:
    """Search from ``start`` for a path to MATCH at ``target`` (anywhere when None)."""
    ops, args, nexts = program.ops, program.args, program.nexts
    n = len(text)
    width = n + 1
    caps = [-1] * program.slots
    # One byte per (instruction, position) pair: a set of the pairs visited took some 60
    # bytes per pair, 140 MB for a many-wildcard pattern on a long path. A lookaround's
    # sub-run, started at each position that reaches it, keeps a set of its few pairs.
    table = bytearray(len(ops) * width) if start == 0 and target == n else None
    seen: set[int] = set()
    # Entries are (pc, pos) to resume at, or (~slot, value) to restore a group boundary.
    stack: list[tuple[int, int]] = [(0, start)]
    steps = 0
    while stack:
        pc, pos = stack.pop()
        if pc < 0:
            caps[~pc] = pos
            continue
        while True:
            key = pc * width + pos
            if table is not None:
                if table[key]:
                    break
                table[key] = 1
            elif key in seen:
                break
            else:
                seen.add(key)
            steps += 1
            op = ops[pc]
            if op == _STR:
                arg = args[pc]
                if not text.startswith(arg, pos):
                    break
                pos += len(arg)
            elif op == _NOT_SLASH:
                if pos >= n or text[pos] == "/":
                    break
                pos += 1
            elif op == _ANY:
                if pos >= n:
                    break
                pos += 1
            elif op == _CHAR:
                if pos >= n or args[pc](text, pos) is None:
                    break
                pos += 1
            elif op == _SPLIT:
                first, second = args[pc]
                stack.append((second, pos))
                pc = first
                continue
            elif op == _SAVE:
                slot = args[pc]
                stack.append((~slot, caps[slot]))
                caps[slot] = pos
            elif op == _BEGIN:
                if pos != 0:
                    break
            elif op == _END:
                if pos != n:
                    break
            elif op == _LOOK:
                sub, behind, negated = args[pc]
                if behind is None:
                    found, used = _run(sub, text, pos, None)
                elif pos >= behind:
                    found, used = _run(sub, text, pos - behind, pos)
                else:
                    found, used = None, 0
                steps += used
                if (found is not None) == negated:
                    break
            else:  # _MATCH
                if target is None or pos == target:
                    return caps, steps
                break
            pc = nexts[pc]
    return None, steps
