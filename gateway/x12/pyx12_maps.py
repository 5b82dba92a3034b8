"""pyx12 maps for 005010X279A1, generated from the same structure description the reader uses.

pyx12 4.0.0 ships no 5010 270/271 maps and its ``map_path`` must hold a complete map set, so the
set is assembled once per process (and cached on disk by content hash): pyx12's own files, plus
our generated 270/271 maps, plus ``maps.xml`` registering them.
"""

from __future__ import annotations

import copy
import hashlib
import os
import shutil
import tempfile
from functools import lru_cache
from pathlib import Path

from lxml import etree

from gateway.mappings import mappings_dir
from gateway.x12.dictionary import pyx12_map_dir, safe_xml_parser
from gateway.x12.structure import ElementSpec, LoopSpec, SegmentSpec, TransactionSpec, load_transaction

MAP_FILES = {"270": "270.5010.X279.A1.xml", "271": "271.5010.X279.A1.xml"}


def _text(parent: etree._Element, tag: str, value: str) -> None:
    etree.SubElement(parent, tag).text = value


def _element_xml(parent: etree._Element, spec: ElementSpec) -> None:
    if spec.is_composite:
        node = etree.SubElement(parent, "composite")
        _text(node, "data_ele", spec.ele)
        _text(node, "name", spec.name)
        _text(node, "usage", spec.usage)
        _text(node, "seq", f"{spec.position:02d}")
        if spec.repeat > 1:
            _text(node, "repeat", str(spec.repeat))
        for comp in spec.components:
            _simple_element(node, comp, f"{spec.ref}-{comp.position:02d}")
        return
    _simple_element(parent, spec, spec.ref)


def _simple_element(parent: etree._Element, spec: ElementSpec, xid: str) -> None:
    node = etree.SubElement(parent, "element", xid=xid)
    _text(node, "data_ele", spec.ele)
    _text(node, "name", spec.name)
    _text(node, "usage", spec.usage)
    _text(node, "seq", f"{spec.position:02d}")
    if spec.codes:
        codes = etree.SubElement(node, "valid_codes")
        for code in sorted(spec.codes):
            _text(codes, "code", code)


class _Positions:
    def __init__(self) -> None:
        self.value = 0

    def next(self) -> str:
        self.value += 10
        return f"{self.value:04d}"


def _shared_max_use(seg: SegmentSpec) -> int | None:
    """pyx12 counts uses per segment id within a loop, so same-id siblings share one limit."""
    if seg.loop is None:
        return seg.max_use
    total = 0
    for item in seg.loop.body:
        if isinstance(item, SegmentSpec) and item.seg_id == seg.seg_id:
            if item.max_use is None:
                return None
            total += item.max_use
    return total


def _segment_xml(parent: etree._Element, seg: SegmentSpec, pos: str) -> None:
    node = etree.SubElement(parent, "segment", xid=seg.seg_id)
    _text(node, "name", seg.name)
    _text(node, "usage", seg.usage)
    _text(node, "pos", pos)
    max_use = _shared_max_use(seg)
    _text(node, "max_use", ">1" if max_use is None else str(max_use))
    for rule in seg.syntax:
        _text(node, "syntax", rule)
    for element in seg.elements:
        _element_xml(node, element)


def _loop_xml(parent: etree._Element, loop: LoopSpec, positions: _Positions, *, wrapper: bool = False) -> None:
    node = etree.SubElement(parent, "loop", xid=loop.loop_id, **({"type": "wrapper"} if wrapper else {}))
    _text(node, "name", loop.name or loop.loop_id)
    _text(node, "usage", loop.usage)
    pos_node = etree.SubElement(node, "pos")
    _text(node, "repeat", ">1" if loop.repeat is None else str(loop.repeat))
    first = True
    for item in loop.body:
        if isinstance(item, SegmentSpec):
            pos = positions.next()
            if first:
                pos_node.text = pos
            _segment_xml(node, item, pos)
        else:
            if first:
                pos_node.text = f"{positions.value + 10:04d}"
            _loop_xml(node, item, positions)
        first = False


def generate_map(spec: TransactionSpec) -> bytes:
    """The pyx12 map XML of one transaction, wrapped in pyx12's own 5010 envelope definitions."""
    control = etree.parse(f"{pyx12_map_dir()}/x12.control.00501.xml", safe_xml_parser()).getroot()
    isa_loop = copy.deepcopy(control.find("loop"))
    gs_loop = isa_loop.find("loop")
    for element in gs_loop.iter("element"):
        if element.get("xid") == "GS01":
            codes = element.find("valid_codes")
            if codes is not None:
                for c in list(codes):
                    codes.remove(c)
                _text(codes, "code", spec.functional_group)
    # positions as in pyx12's own 5010 maps: ST_LOOP (0200) sits between GS and GE
    for node, pos in ((isa_loop.find("segment[@xid='ISA']"), "0100"), (gs_loop, "0200"),
                      (isa_loop.find("segment[@xid='TA1']"), "0200"), (isa_loop.find("segment[@xid='IEA']"), "0300"),
                      (gs_loop.find("segment[@xid='GS']"), "0100"), (gs_loop.find("segment[@xid='GE']"), "0300")):
        node.find("pos").text = pos
    ge = gs_loop.find("segment[@xid='GE']")
    gs_loop.remove(ge)
    st_loop = etree.SubElement(gs_loop, "loop", xid="ST_LOOP", type="explicit")
    _text(st_loop, "name", "Transaction Set Header")
    _text(st_loop, "usage", "R")
    _text(st_loop, "pos", "0200")
    _text(st_loop, "repeat", ">1")
    gs_loop.append(ge)
    header, detail, footer = (w for w in spec.root.body if isinstance(w, LoopSpec))
    positions = _Positions()
    st = header.body[0]
    assert isinstance(st, SegmentSpec) and st.seg_id == "ST"
    _segment_xml(st_loop, st, positions.next())
    header_rest = LoopSpec("HEADER", "Header", "R", 1, body=header.body[1:])
    _loop_xml(st_loop, header_rest, positions, wrapper=True)
    detail_node = LoopSpec("DETAIL", "Detail", "S", None, body=detail.body)
    _loop_xml(st_loop, detail_node, positions, wrapper=True)
    for seg in footer.body:
        assert isinstance(seg, SegmentSpec)
        _segment_xml(st_loop, seg, positions.next())
    root = etree.Element("transaction", xid=spec.set_id)
    _text(root, "name", f"{spec.name} {spec.implementation}")
    root.append(isa_loop)
    return etree.tostring(root, xml_declaration=True, encoding="utf-8", pretty_print=True)


def _maps_xml() -> bytes:
    tree = etree.parse(f"{pyx12_map_dir()}/maps.xml", safe_xml_parser())
    version = tree.getroot().find("version[@icvn='00501']")
    for set_id, fic in (("270", "HS"), ("271", "HB")):
        entry = etree.Element("map", vriic="005010X279A1", fic=fic, abbr=set_id)
        entry.text = MAP_FILES[set_id]
        version.insert(0, entry)
    return etree.tostring(tree, xml_declaration=True, encoding="utf-8")


def build_map_set(target: str | os.PathLike[str], mappings: str | None = None) -> Path:
    """Write a complete pyx12 map folder (pyx12's maps + ours) to ``target``."""
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for name in os.listdir(pyx12_map_dir()):
        if name.endswith((".xml", ".xsd", ".dtd")):
            shutil.copyfile(os.path.join(pyx12_map_dir(), name), target / name)
    for set_id, filename in MAP_FILES.items():
        (target / filename).write_bytes(generate_map(load_transaction(set_id, mappings)))
    (target / "maps.xml").write_bytes(_maps_xml())
    return target


def _content_hash(mappings: str | None) -> str:
    digest = hashlib.sha256()
    base = mappings_dir(mappings)
    for rel in sorted(str(p.relative_to(base)) for p in base.rglob("*.yaml")):
        digest.update(rel.encode())
        digest.update((base / rel).read_bytes())
    digest.update(pyx12_map_dir().encode())
    digest.update(Path(__file__).read_bytes())
    return digest.hexdigest()[:16]


@lru_cache(maxsize=4)
def map_set_dir(mappings: str | None = None) -> str:
    """The assembled map folder for these mappings, built on first use and reused afterwards."""
    folder = Path(tempfile.gettempdir()) / f"fhir-x12-pyx12-maps-{_content_hash(mappings)}"
    if not (folder / "maps.xml").exists():
        staging = Path(tempfile.mkdtemp(prefix="fhir-x12-maps-"))
        build_map_set(staging, mappings)
        try:
            staging.rename(folder)
        except OSError:  # another process won the race; its copy is identical
            shutil.rmtree(staging, ignore_errors=True)
    return str(folder)
