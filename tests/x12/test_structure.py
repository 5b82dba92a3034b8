"""The X279A1 structure description, its code lists, and the pyx12 maps generated from it."""

from __future__ import annotations

from lxml import etree

from gateway.mappings import code_table, load_yaml
from gateway.x12.dictionary import data_elements, safe_xml_parser
from gateway.x12.pyx12_maps import generate_map, map_set_dir
from gateway.x12.structure import LoopSpec, SegmentSpec, load_transaction

# Counts from ../shared/reference/x12-eligibility-reference.md §3.4-§3.5
REFERENCE_COUNTS = {"service_type": 187, "eligibility_benefit": 35, "insurance_type": 45, "time_period": 19,
                    "quantity_qualifier": 18, "coverage_level": 9, "follow_up_action": 8}
# AAA03 codes allowed per loop (the §3.4 table's columns)
AAA_PER_LOOP = {"2000A": 4, "2100A": 6, "2100B": 13, "2100C": 24, "2100D": 24, "2110C": 24, "2110D": 24}


def find_segments(loop: LoopSpec, seg_id: str) -> list[SegmentSpec]:
    found = []
    for item in loop.body:
        if isinstance(item, SegmentSpec):
            if item.seg_id == seg_id:
                found.append(item)
        else:
            found.extend(find_segments(item, seg_id))
    return found


def test_code_tables_have_the_reference_counts():
    for name, count in REFERENCE_COUNTS.items():
        assert len(code_table(name)["codes"]) == count, name
    assert "29" not in code_table("service_type")["codes"] and "TWO" not in code_table("coverage_level")["codes"]


def test_maps_carry_full_code_lists():
    spec = load_transaction("271")
    eb = find_segments(spec.root, "EB")
    assert len(eb) == 2  # 2110C and 2110D
    for seg in eb:
        assert len(seg.elements[0].codes) == 35
        assert len(seg.elements[2].codes) == 187
        assert seg.elements[2].repeat == 99
    eq = find_segments(load_transaction("270").root, "EQ")
    assert all(len(s.elements[0].codes) == 187 and s.elements[0].repeat == 99 for s in eq)
    for seg in find_segments(spec.root, "AAA"):
        assert len(seg.elements[2].codes) == AAA_PER_LOOP[seg.loop.loop_id], seg.loop.loop_id


def test_every_element_number_is_in_pyx12s_dictionary():
    dictionary = data_elements()
    for seg_id, defn in load_yaml("x12/segments.yaml").items():
        for element in defn["elements"]:
            numbers = [c["ele"] for c in element["components"]] if "composite" in element else [element["ele"]]
            assert all(str(n) in dictionary for n in numbers), (seg_id, element)


def test_ls_2120_le_sit_at_the_2110_level_after_iii():
    for loop_id in ("2110C", "2110D"):
        loop = next(lp for lp in _loops(load_transaction("271").root) if lp.loop_id == loop_id)
        order = [item.seg_id if isinstance(item, SegmentSpec) else item.loop_id[:4] for item in loop.body]
        assert order == ["EB", "HSD", "REF", "DTP", "AAA", "MSG", "2115", "LS", "2120", "LE"]


def _loops(loop: LoopSpec):
    for item in loop.body:
        if isinstance(item, LoopSpec):
            yield item
            yield from _loops(item)


def test_generated_pyx12_map_positions_increase_in_document_order():
    for set_id in ("270", "271"):
        root = etree.fromstring(generate_map(load_transaction(set_id)), safe_xml_parser())
        st_loop = root.find(".//loop[@xid='ST_LOOP']")
        positions = [int(seg.findtext("pos")) for seg in st_loop.iter("segment")]
        assert positions == sorted(positions) and len(set(positions)) == len(positions)


def test_map_set_is_complete_and_registered():
    folder = map_set_dir()
    maps = etree.parse(f"{folder}/maps.xml", safe_xml_parser()).getroot()
    entries = {(m.get("vriic"), m.get("fic")): m.text for m in maps.iter("map")}
    assert entries[("005010X279A1", "HS")] == "270.5010.X279.A1.xml"
    assert entries[("005010X279A1", "HB")] == "271.5010.X279.A1.xml"
    for name in ("x12.control.00501.xml", "codes.xml", "dataele.xml", "270.5010.X279.A1.xml"):
        assert (folder + "/" + name) and etree.parse(f"{folder}/{name}", safe_xml_parser()) is not None
