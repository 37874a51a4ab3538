"""YAML read as plain data, JSON's data model and nothing more (pure: text in, values out).

A batch file becomes JSON on its way to the API server, so only what JSON can hold means
anything in it. PyYAML's safe loader reads YAML 1.1 and goes further, with surprises a user
cannot see in the file: ``retries: no`` is ``False`` (then 0), ``2026-02-30`` is a date
(and a crash), ``!!int x`` raises whatever its constructor raises, a repeated key silently
wins, aliases expand without limit (a 675-byte file can stand for billions of values) and
nesting recurses until Python's stack runs out. This loader, in their place:

* resolves plain scalars by YAML 1.2's core schema: ``true``/``false``, ``null``/``~``, decimal,
  ``0o`` and ``0x`` integers, floats; everything else is a string, so ``retries: no`` is the
  string "no", which the model refuses with the field's name;
* accepts only the tags of those values (``!!str``, ``!!int``, ``!!float``, ``!!bool``,
  ``!!null``, ``!!seq``, ``!!map``) and only values that fit them;
* refuses a repeated key, a key that is not a string and merge keys (``<<``);
* refuses, before building anything, nesting deeper than :data:`MAX_DEPTH`, an alias inside
  the value it names, and more than :data:`MAX_VALUES` values (aliases expanded).

Every error is a :class:`YamlError` with the line and column an editor shows (lines end at
``\\n``; YAML also counts U+2028 and friends as line breaks, editors do not).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, cast

import yaml
from yaml.composer import Composer
from yaml.constructor import BaseConstructor, ConstructorError
from yaml.error import Mark, MarkedYAMLError, YAMLError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader, ReaderError
from yaml.resolver import BaseResolver
from yaml.scanner import Scanner

from sierra_operator.core.model import INT64_MAX, MAX_DEPTH, MAX_VALUES, shown

_TAG = "tag:yaml.org,2002:"
_BOOL = re.compile(r"(?:true|True|TRUE|false|False|FALSE)\Z")
_NULL = re.compile(r"(?:~|null|Null|NULL|)\Z")
_INT = re.compile(r"(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)\Z")
_FLOAT = re.compile(
    r"(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
    r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))\Z"
)
_MAX_NUMBER_CHARS = 100
"""A number written with more characters is no 64-bit value (and Python refuses to turn
4,301+ decimal digits into an int at all)."""


class YamlError(ValueError):
    """Text that is not a plain YAML document; the message starts with line and column."""


class _Refused(ConstructorError):
    """Valid YAML this loader does not take (a tag, a repeated key, an alias bomb...)."""


class _Resolver(BaseResolver):
    """YAML 1.2 core schema: the only plain scalars that are not strings."""


for _tag, _regexp, _first in (
    ("bool", _BOOL, "tTfF"),
    ("null", _NULL, ["~", "n", "N", ""]),
    ("int", _INT, "-+0123456789"),
    ("float", _FLOAT, "-+0123456789."),
):
    _Resolver.add_implicit_resolver(_TAG + _tag, _regexp, list(_first))


class _Constructor(BaseConstructor):
    """Builds dicts, lists, str, int, float, bool and None; refuses everything else."""

    def __init__(self) -> None:
        super().__init__()
        self.text = ""

    def where(self, mark: Mark) -> str:
        """'line L, column C' of ``mark`` as an editor counts them."""
        return _line_column(self.text, mark.index)

    def scalar(self, node: Node, what: str) -> str:
        """The text of a scalar node; a tagged collection is an error naming the tag."""
        if not isinstance(node, ScalarNode):
            raise _Refused(
                None,
                None,
                f"{_short_tag(node.tag)} needs {what}, not a collection",
                node.start_mark,
            )
        return str(node.value)

    def construct_str(self, node: Node) -> str:
        return self.scalar(node, "a string")

    def construct_null(self, node: Node) -> None:
        value = self.scalar(node, "null")
        if not _NULL.match(value):
            raise _Refused(
                None, None, f"{shown(value)} is not null (tagged !!null)", node.start_mark
            )
        return None

    def construct_bool(self, node: Node) -> bool:
        value = self.scalar(node, "true or false")
        if not _BOOL.match(value):
            raise _Refused(
                None,
                None,
                f"{shown(value)} is not a boolean (tagged !!bool); write true or false",
                node.start_mark,
            )
        return value.lower() == "true"

    def construct_int(self, node: Node) -> int:
        value = self.scalar(node, "an integer")
        if not _INT.match(value):
            raise _Refused(
                None, None, f"{shown(value)} is not an integer (tagged !!int)", node.start_mark
            )
        self.check_length(value, node)
        sign = -1 if value.startswith("-") else 1
        digits = value.lstrip("+-")
        if digits.startswith(("0x", "0o")):
            return int(digits[2:], 16 if digits[1] == "x" else 8)
        return sign * int(digits)

    def construct_float(self, node: Node) -> float:
        value = self.scalar(node, "a number")
        if not (_FLOAT.match(value) or _INT.match(value)):
            raise _Refused(
                None, None, f"{shown(value)} is not a number (tagged !!float)", node.start_mark
            )
        self.check_length(value, node)
        if value.lower().endswith(("inf", "nan")):
            return float(value.replace(".", ""))
        if value.startswith(("0x", "0o")):
            return float(self.construct_int(node))
        return float(value)

    def check_length(self, value: str, node: Node) -> None:
        """A number too long to be one: refused before Python spends time converting it."""
        if len(value) > _MAX_NUMBER_CHARS:
            raise _Refused(
                None,
                None,
                f"a number of {len(value):,} characters is out of range (integers are 64-bit: "
                f"at most {INT64_MAX})",
                node.start_mark,
            )

    def construct_seq(self, node: Node) -> list[Any]:
        if not isinstance(node, SequenceNode):
            raise _Refused(None, None, "!!seq needs a list, not a single value", node.start_mark)
        return [self.construct_object(child, deep=True) for child in node.value]

    def construct_map(self, node: Node) -> dict[str, Any]:
        if not isinstance(node, MappingNode):
            raise _Refused(None, None, "!!map needs a mapping, not a single value", node.start_mark)
        out: dict[str, Any] = {}
        first: dict[str, Mark] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _TAG + "merge" or (
                isinstance(key_node, ScalarNode) and key_node.value == "<<" and not key_node.style
            ):
                raise _Refused(
                    None,
                    None,
                    "YAML merge keys (<<) are not supported; write the fields out",
                    key_node.start_mark,
                )
            key = self.construct_object(key_node, deep=True)
            if not isinstance(key, str):
                raise _Refused(
                    None,
                    None,
                    f"the key {shown(key)} is not a string; keys are field names (quote it if "
                    "it is one)",
                    key_node.start_mark,
                )
            if key in first:
                raise _Refused(
                    None,
                    None,
                    f"the key {shown(key)} is repeated (first at {self.where(first[key])}); "
                    "remove one of them",
                    key_node.start_mark,
                )
            first[key] = key_node.start_mark
            out[key] = self.construct_object(value_node, deep=True)
        return out

    def construct_unsupported(self, node: Node) -> Any:
        raise _Refused(
            None,
            None,
            f"the YAML tag {_short_tag(node.tag)} is not supported (a batch holds JSON values "
            "only); remove it and write the value plainly",
            node.start_mark,
        )


_Constructor.yaml_constructors = {
    _TAG + "str": _Constructor.construct_str,
    _TAG + "null": _Constructor.construct_null,
    _TAG + "bool": _Constructor.construct_bool,
    _TAG + "int": _Constructor.construct_int,
    _TAG + "float": _Constructor.construct_float,
    _TAG + "seq": _Constructor.construct_seq,
    _TAG + "map": _Constructor.construct_map,
    None: _Constructor.construct_unsupported,  # any other tag
}


class _Composer(Composer):
    """PyYAML's composer, bounded: depth, and the values of the document so far with every
    use of an alias counted at its expanded size, checked as each node is made, so neither a
    deep document nor an alias bomb (nor a megabyte of ``[1,1,1,...``) is ever built."""

    if TYPE_CHECKING:

        def peek_event(self) -> Any:
            """Parser's (a sibling base of the loader)."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.values = 0
        self.sizes: dict[int, int] = {}

    def compose_document(self) -> Node | None:
        self.values, self.sizes = 0, {}
        node: Node | None = super().compose_document()
        return node

    def compose_node(self, parent: Node | None, index: Any) -> Node | None:
        event = self.peek_event()
        alias = isinstance(event, AliasEvent)
        if alias:
            target = self.anchors.get(event.anchor)
            if target is not None and id(target) not in self.sizes:
                raise _Refused(
                    None,
                    None,
                    f"the alias *{event.anchor} is inside the value it names (a recursive alias)",
                    event.start_mark,
                )
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Refused(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        try:
            node: Node | None = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        if node is None:
            return node
        if alias:
            self.values += self.sizes[id(node)]
        else:
            self.values += 1
            size = 1
            if isinstance(node, SequenceNode):
                size += sum(self.sizes[id(child)] for child in node.value)
            elif isinstance(node, MappingNode):
                size += sum(self.sizes[id(k)] + self.sizes[id(v)] for k, v in node.value)
            self.sizes[id(node)] = size
        if self.values > MAX_VALUES:
            raise _Refused(
                None,
                None,
                f"the document has more than {MAX_VALUES:,} values here (every use of a YAML "
                "alias counted); write a smaller batch, or use fewer aliases",
                event.start_mark,
            )
        return node


class _Loader(Reader, Scanner, Parser, _Composer, _Constructor, _Resolver):
    """Pure-Python PyYAML stages with the bounded composer and plain constructor."""

    def __init__(self, text: str) -> None:
        Reader.__init__(self, text)
        Scanner.__init__(self)
        Parser.__init__(self)
        _Composer.__init__(self)
        _Constructor.__init__(self)
        _Resolver.__init__(self)
        self.text = text


def load_documents(text: str) -> list[Any]:
    """Every document of ``text`` as plain values; :class:`YamlError` on anything else."""
    try:
        return list(yaml.load_all(text, Loader=cast(Any, _Loader)))  # stubs list the stock ones
    except ReaderError as exc:
        raise YamlError(
            f"{_line_column(text, exc.position)}: the character U+{_code_point(exc.character):04X} "
            "is not allowed in YAML (a control character); remove it"
        ) from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{_line_column(text, mark.index)}: " if mark is not None else ""
        problem = exc.problem or exc.context or "not YAML"
        if not isinstance(exc, _Refused):
            problem = f"invalid YAML: {problem}"
        raise YamlError(f"{where}{problem}") from None
    except YAMLError as exc:
        raise YamlError(f"invalid YAML: {exc}") from None


def _line_column(text: str, index: int) -> str:
    """'line L, column C' (1-based) of character ``index``, lines ending at '\\n' only."""
    index = max(0, min(index, len(text)))
    line_start = text.rfind("\n", 0, index) + 1
    return f"line {text.count(chr(10), 0, index) + 1}, column {index - line_start + 1}"


def _code_point(character: object) -> int:
    """ReaderError's character: PyYAML gives its code point (an int) for text input."""
    return character if isinstance(character, int) else ord(str(character)[:1] or "\0")


def _short_tag(tag: str | None) -> str:
    """'!!timestamp' for 'tag:yaml.org,2002:timestamp'; other tags as written, shortened."""
    if tag is None:
        return "(no tag)"
    if tag.startswith(_TAG):
        return "!!" + shown(tag.removeprefix(_TAG), quote=False)
    return shown(tag, quote=False)
