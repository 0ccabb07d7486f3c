"""Witness policies in C2SP tlog-policy syntax: which logs, which witnesses, and the quorum.

```
log <vkey> [<url>]
witness <name> <vkey> [<url>]
group <name> all|any|<k> <name>...
quorum <name>|none
```

A checkpoint meets the policy when a listed log signed it and the witnesses that cosigned it
satisfy the quorum (a group holds when at least k of its members hold). Witness vkeys are
Ed25519 cosignature keys (type 0x04, contract/cosignature.py), log vkeys Ed25519 note keys (type
0x01). Names are opaque bytes to the spec; here they are text (the file is read as UTF-8).
Limits: 32 logs, 32 witnesses, 32 groups (the spec's recommended minimum), nothing beyond.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meterchain.contract.cosignature import CosignerKey
from meterchain.contract.errors import MeterchainError
from meterchain.contract.note import NoteVerifier

MAX_ENTRIES = 32
_K_RE = re.compile(r"[1-9][0-9]{0,3}")


class PolicyFileError(MeterchainError):
    """A policy file does not parse (``line`` is its 1-based line number)."""

    check = "policy"


@dataclass(frozen=True, slots=True)
class Witness:
    name: str
    key: CosignerKey
    url: str | None = None


@dataclass(frozen=True, slots=True)
class Group:
    name: str
    threshold: int
    members: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class WitnessPolicy:
    """A parsed policy; :meth:`satisfied` evaluates the quorum over the names that cosigned."""

    quorum: str
    logs: tuple[tuple[NoteVerifier, str | None], ...] = ()
    witnesses: Mapping[str, Witness] = field(default_factory=dict)
    groups: Mapping[str, Group] = field(default_factory=dict)

    @property
    def keys(self) -> tuple[CosignerKey, ...]:
        return tuple(w.key for w in self.witnesses.values())

    def witness_named(self, key_name: str) -> Witness | None:
        """The policy's witness whose key is named ``key_name`` (the signature line's name)."""
        return next((w for w in self.witnesses.values() if w.key.name == key_name), None)

    def holds(self, name: str, cosigned: set[str]) -> bool:
        """Whether witness or group ``name`` witnessed, given the policy names that cosigned."""
        if name == "none":
            return True
        if name in self.witnesses:
            return name in cosigned
        group = self.groups[name]
        return sum(self.holds(member, cosigned) for member in group.members) >= group.threshold

    def satisfied(self, cosigned_keys: Iterable[str]) -> bool:
        """``cosigned_keys``: the key names of verified cosignatures."""
        names = {w.name for w in self.witnesses.values() if w.key.name in set(cosigned_keys)}
        return self.holds(self.quorum, names)

    def describe(self) -> str:
        """The quorum in words: ``2 of w1, w2, w3``."""
        if self.quorum == "none":
            return "no witnesses"
        if self.quorum in self.witnesses:
            return self.quorum
        group = self.groups[self.quorum]
        return f"{group.threshold} of {', '.join(group.members)}"

    def to_text(self) -> str:
        """The policy in tlog-policy syntax (parses back to an equal policy)."""
        lines = [f"log {key}" + (f" {url}" if url else "") for key, url in self.logs]
        lines += [f"witness {w.name} {w.key}" + (f" {w.url}" if w.url else "")
                  for w in self.witnesses.values()]
        lines += [f"group {g.name} {g.threshold} {' '.join(g.members)}" for g in self.groups.values()]
        lines.append(f"quorum {self.quorum}")
        return "\n".join(lines) + "\n"

    @classmethod
    def k_of_n(cls, k: int, witnesses: Iterable[Witness], logs: Iterable[NoteVerifier] = ()) -> WitnessPolicy:
        """k of the given witnesses (a group named ``witnesses``)."""
        listed = {w.name: w for w in witnesses}
        text = "".join(f"log {key}\n" for key in logs)
        text += "".join(f"witness {w.name} {w.key}" + (f" {w.url}" if w.url else "") + "\n"
                        for w in listed.values())
        text += f"group witnesses {k} {' '.join(listed)}\nquorum witnesses\n"
        return parse_policy(text)


def parse_policy(text: str) -> WitnessPolicy:
    """Parse a tlog-policy file; raise :class:`PolicyFileError` naming the line."""
    logs: list[tuple[NoteVerifier, str | None]] = []
    witnesses: dict[str, Witness] = {}
    groups: dict[str, Group] = {}
    quorum: str | None = None
    public_keys: set[bytes] = set()
    for number, raw_line in enumerate(text.split("\n"), 1):
        if any((ord(c) < 0x20 and c != "\t") or ord(c) == 0x7F for c in raw_line):
            raise PolicyFileError("control character in policy file", line=number)
        words = raw_line.replace("\t", " ").split()
        if not words or words[0].startswith("#"):
            continue

        def bad(message: str, line: int = number) -> PolicyFileError:
            return PolicyFileError(message, line=line)

        keyword, args = words[0], words[1:]
        try:
            if keyword == "log":
                if not 1 <= len(args) <= 2:
                    raise bad("log <vkey> [<url>]")
                verifier = NoteVerifier.parse(args[0])
                if verifier.public_key in public_keys:
                    raise bad("duplicate log key")
                public_keys.add(verifier.public_key)
                logs.append((verifier, args[1] if len(args) == 2 else None))
            elif keyword == "witness":
                if not 2 <= len(args) <= 3:
                    raise bad("witness <name> <vkey> [<url>]")
                name = args[0]
                if name in witnesses or name in groups or name == "none":
                    raise bad(f"name {name!r} is already defined")
                key = CosignerKey.parse(args[1])
                if key.public_key in public_keys:
                    raise bad("duplicate witness key")
                public_keys.add(key.public_key)
                witnesses[name] = Witness(name, key, args[2] if len(args) == 3 else None)
            elif keyword == "group":
                if len(args) < 3:
                    raise bad("group <name> all|any|<k> <name>...")
                name, spec, members = args[0], args[1], tuple(args[2:])
                if name in witnesses or name in groups or name == "none":
                    raise bad(f"name {name!r} is already defined")
                if len(set(members)) != len(members):
                    raise bad("a group lists each member at most once")
                for member in members:
                    if member not in witnesses and member not in groups:
                        raise bad(f"group member {member!r} is not defined on an earlier line")
                if spec == "all":
                    k = len(members)
                elif spec == "any":
                    k = 1
                elif _K_RE.fullmatch(spec) and 1 <= int(spec) <= len(members):
                    k = int(spec)
                else:
                    raise bad(f"group threshold {spec!r} is not all, any or 1 <= k <= {len(members)}")
                groups[name] = Group(name, k, members)
            elif keyword == "quorum":
                if len(args) != 1:
                    raise bad("quorum <name>")
                if quorum is not None:
                    raise bad("a policy has exactly one quorum line")
                if args[0] != "none" and args[0] not in witnesses and args[0] not in groups:
                    raise bad(f"quorum {args[0]!r} is not defined on an earlier line")
                quorum = args[0]
            else:
                raise bad(f"unknown keyword {keyword!r}")
        except PolicyFileError:
            raise
        except MeterchainError as exc:
            raise bad(str(exc)) from None
        if max(len(logs), len(witnesses), len(groups)) > MAX_ENTRIES:
            raise bad(f"more than {MAX_ENTRIES} logs, witnesses or groups")
    if quorum is None:
        raise PolicyFileError("a policy needs a quorum line (quorum none for no witnesses)")
    return WitnessPolicy(quorum, tuple(logs), witnesses, groups)
