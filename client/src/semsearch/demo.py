"""The seed demo: five short contexts that show what an embedding space does with drink and food."""

from __future__ import annotations

DEMO_COLLECTION = "demo"

DEMO_DOCUMENTS: list[tuple[str, str, dict[str, str]]] = [
    ("c1", "I eat salmon", {"kind": "eat"}),
    ("c2", "I eat steak", {"kind": "eat"}),
    ("c3", "I drink red-wine", {"kind": "drink"}),
    ("c4", "I drink water", {"kind": "drink"}),
    ("c5", "I drink a white-wine mix", {"kind": "drink"}),
]
