"""X12 data element dictionary (types and lengths), taken from the installed pyx12."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from lxml import etree


@dataclass(frozen=True, slots=True)
class DataElement:
    number: str
    data_type: str
    min_len: int
    max_len: int
    name: str


def pyx12_map_dir() -> str:
    """Folder of the map files shipped with pyx12 (control maps, codes.xml, dataele.xml)."""
    return str(resources.files("pyx12") / "map")


def safe_xml_parser() -> etree.XMLParser:
    """An lxml parser with entity resolution and network access off."""
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


@lru_cache(maxsize=1)
def data_elements() -> dict[str, DataElement]:
    """Every data element pyx12 knows, keyed by its number (``"1365"``, ``"I12"`` ...)."""
    tree = etree.parse(f"{pyx12_map_dir()}/dataele.xml", safe_xml_parser())
    result = {}
    for node in tree.getroot().iter("data_ele"):
        number = node.get("ele_num")
        result[number] = DataElement(
            number=number,
            data_type=node.get("data_type"),
            min_len=int(node.get("min_len")),
            max_len=int(node.get("max_len")),
            name=node.get("name", ""),
        )
    return result
