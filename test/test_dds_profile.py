"""The Fast DDS large-image profile: loaded only when the user has not configured DDS, and well-formed."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from densehybrid_ros.node.dds import large_image_profile, use_large_image_transport

NS = {"f": "http://www.eprosima.com"}


def test_profile_is_set_on_a_bare_environment_and_is_valid_xml():
    env: dict = {}
    path = use_large_image_transport(env)
    assert path is not None and env["FASTDDS_DEFAULT_PROFILES_FILE"] == str(path) == str(large_image_profile())
    root = ET.parse(path).getroot()
    shm = [d for d in root.iterfind(".//f:transport_descriptor", NS) if d.findtext("f:type", namespaces=NS) == "SHM"]
    assert len(shm) == 1 and int(shm[0].findtext("f:segment_size", namespaces=NS)) >= 4 * 512 * 256 * 4
    participant = root.find(".//f:participant", NS)
    assert participant.get("is_default_profile") == "true"
    used = [t.text for t in participant.iterfind(".//f:userTransports/f:transport_id", NS)]
    declared = [t.text for t in root.iterfind(".//f:transport_descriptor/f:transport_id", NS)]
    assert sorted(used) == sorted(declared) and participant.findtext(".//f:useBuiltinTransports", namespaces=NS) == "false"


def test_user_dds_configuration_is_left_alone():
    for env in ({"FASTDDS_DEFAULT_PROFILES_FILE": "/mine.xml"}, {"FASTRTPS_DEFAULT_PROFILES_FILE": "/old.xml"},
                {"FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA"}, {"RMW_IMPLEMENTATION": "rmw_cyclonedds_cpp"}):
        before = dict(env)
        assert use_large_image_transport(env) is None and env == before
    env = {"RMW_IMPLEMENTATION": "rmw_fastrtps_cpp"}
    assert use_large_image_transport(env) is not None
