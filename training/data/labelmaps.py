"""Label tables of the training datasets: dataset ids -> Cityscapes trainIds, and the classes of each negative
source that overlap the road-scene (inlier) taxonomy and so must never be pasted as negatives.

Sources (public, read to learn; nothing copied):

- Mapillary Vistas v1.2: 66 classes; ``config.json`` / ``config_v1.2.json`` lists them in label-id order. The
  order in :data:`VISTAS_V12_NAMES` was checked against openvinotoolkit/datumaro
  (``plugins/mapillary_vistas_format/format.py``, ``MapillaryVistasLabelMap_V12``) and a Cityscapes mapping with
  explicit ids (khwstolle/unipercept, ``data/sets/mapillary.py``).
- WildDash 2 (``wd_public_02``): ids 0..33 are the Cityscapes labelIds, 34..38 are pickup, van, billboard,
  street-light, road-marking (``wilddash2-meta.json`` as copied in public code; category ids written to
  ``*_labelIds.png`` by ozendelait/wilddash_scripts ``pano2sem.py``).
- ADE20K SceneParsing 150 (``ADEChallengeData2016``): 0 = other/unlabelled, 1..150 as in CSAILVision
  ``sceneparsing/objectInfo150.csv``.
- COCO 2017 instance categories: names as in ``instances_*2017.json`` ``categories``.
"""
from __future__ import annotations

import numpy as np

from densehybrid_ros.datasets import cityscapes_labels as csl
from densehybrid_ros.datasets.base import VOID

# --- Mapillary Vistas v1.2 -> Cityscapes trainIds ---------------------------------------------------------

VISTAS_V12_NAMES: tuple[str, ...] = (
    "animal--bird", "animal--ground-animal", "construction--barrier--curb", "construction--barrier--fence",
    "construction--barrier--guard-rail", "construction--barrier--other-barrier", "construction--barrier--wall",
    "construction--flat--bike-lane", "construction--flat--crosswalk-plain", "construction--flat--curb-cut",
    "construction--flat--parking", "construction--flat--pedestrian-area", "construction--flat--rail-track",
    "construction--flat--road", "construction--flat--service-lane", "construction--flat--sidewalk",
    "construction--structure--bridge", "construction--structure--building", "construction--structure--tunnel",
    "human--person", "human--rider--bicyclist", "human--rider--motorcyclist", "human--rider--other-rider",
    "marking--crosswalk-zebra", "marking--general", "nature--mountain", "nature--sand", "nature--sky",
    "nature--snow", "nature--terrain", "nature--vegetation", "nature--water", "object--banner", "object--bench",
    "object--bike-rack", "object--billboard", "object--catch-basin", "object--cctv-camera", "object--fire-hydrant",
    "object--junction-box", "object--mailbox", "object--manhole", "object--phone-booth", "object--pothole",
    "object--street-light", "object--support--pole", "object--support--traffic-sign-frame",
    "object--support--utility-pole", "object--traffic-light", "object--traffic-sign--back",
    "object--traffic-sign--front", "object--trash-can", "object--vehicle--bicycle", "object--vehicle--boat",
    "object--vehicle--bus", "object--vehicle--car", "object--vehicle--caravan", "object--vehicle--motorcycle",
    "object--vehicle--on-rails", "object--vehicle--other-vehicle", "object--vehicle--trailer",
    "object--vehicle--truck", "object--vehicle--wheeled-slow", "void--car-mount", "void--ego-vehicle",
    "void--unlabeled",
)

# Vistas v1.2 class name -> Cityscapes trainId class name (None = void, 255). Every one of the 66 names is listed.
# Basis: the Vistas -> Cityscapes table used by the DenseHybrid authors' group in their later open-set code
# (``_vistas_to_cityscapes``, a name -> name dict read against ``config.json``), with ONE deliberate change:
# Vistas classes whose Cityscapes counterpart is itself an ignored ("void") Cityscapes class stay void here
# instead of being folded into a known class (that table maps guard-rail -> fence, parking -> road,
# rail-track -> road, bridge -> building, tunnel -> building). Cityscapes ignores guard rail, parking, rail
# track, bridge and tunnel, and the void-as-unknown protocol (thesis 5.1.3) even treats them as unknowns, so
# training them as known classes from Vistas would contradict both.
VISTAS_TO_CITYSCAPES: dict[str, str | None] = {
    "animal--bird": None,
    "animal--ground-animal": None,
    "construction--barrier--curb": "sidewalk",
    "construction--barrier--fence": "fence",
    "construction--barrier--guard-rail": None,        # Cityscapes "guard rail" is void
    "construction--barrier--other-barrier": None,
    "construction--barrier--wall": "wall",
    "construction--flat--bike-lane": "road",
    "construction--flat--crosswalk-plain": "road",
    "construction--flat--curb-cut": "sidewalk",
    "construction--flat--parking": None,              # Cityscapes "parking" is void
    "construction--flat--pedestrian-area": "sidewalk",
    "construction--flat--rail-track": None,           # Cityscapes "rail track" is void
    "construction--flat--road": "road",
    "construction--flat--service-lane": "road",
    "construction--flat--sidewalk": "sidewalk",
    "construction--structure--bridge": None,          # Cityscapes "bridge" is void
    "construction--structure--building": "building",
    "construction--structure--tunnel": None,          # Cityscapes "tunnel" is void
    "human--person": "person",
    "human--rider--bicyclist": "rider",
    "human--rider--motorcyclist": "rider",
    "human--rider--other-rider": "rider",
    "marking--crosswalk-zebra": "road",
    "marking--general": "road",
    "nature--mountain": None,
    "nature--sand": "terrain",
    "nature--sky": "sky",
    "nature--snow": "terrain",
    "nature--terrain": "terrain",
    "nature--vegetation": "vegetation",
    "nature--water": None,
    "object--banner": None,
    "object--bench": None,
    "object--bike-rack": None,
    "object--billboard": None,
    "object--catch-basin": None,
    "object--cctv-camera": None,
    "object--fire-hydrant": None,
    "object--junction-box": None,
    "object--mailbox": None,
    "object--manhole": None,
    "object--phone-booth": None,
    "object--pothole": None,
    "object--street-light": None,
    "object--support--pole": "pole",
    "object--support--traffic-sign-frame": "traffic sign",
    "object--support--utility-pole": "pole",
    "object--traffic-light": "traffic light",
    "object--traffic-sign--back": None,
    "object--traffic-sign--front": "traffic sign",
    "object--trash-can": None,
    "object--vehicle--bicycle": "bicycle",
    "object--vehicle--boat": None,
    "object--vehicle--bus": "bus",
    "object--vehicle--car": "car",
    "object--vehicle--caravan": None,                 # Cityscapes "caravan" is void
    "object--vehicle--motorcycle": "motorcycle",
    "object--vehicle--on-rails": "train",
    "object--vehicle--other-vehicle": None,
    "object--vehicle--trailer": None,                 # Cityscapes "trailer" is void
    "object--vehicle--truck": "truck",
    "object--vehicle--wheeled-slow": None,
    "void--car-mount": None,
    "void--ego-vehicle": None,
    "void--unlabeled": None,
}


def vistas_lut(names: tuple[str, ...] | list[str]) -> np.ndarray:
    """256-entry uint8 LUT: Vistas label id (position in ``names``, the config's label order) -> trainId.

    Ids beyond ``len(names)`` map to void. A name missing from :data:`VISTAS_TO_CITYSCAPES` raises KeyError
    (e.g. a v2.0 config, whose 124 classes this table does not cover)."""
    train_id = {name: i for i, name in enumerate(csl.TRAIN_CLASS_NAMES)}
    lut = np.full(256, VOID, dtype=np.uint8)
    for label_id, name in enumerate(names):
        target = VISTAS_TO_CITYSCAPES[name]
        if target is not None:
            lut[label_id] = train_id[target]
    return lut


# --- WildDash 2 (wd_public_02) -> Cityscapes trainIds -----------------------------------------------------

# Ids 34..38 extend the Cityscapes labelIds (0..33, mapped by the official Cityscapes table). The mapping of the
# extra ids follows the DenseHybrid authors' group (``wd_to_city_mappings``): pickup and van are cars, road
# markings are road, billboards and street lights are void (Cityscapes has no such class).
WILDDASH_EXTRA_IDS: dict[int, tuple[str, str | None]] = {
    34: ("pickup", "car"),
    35: ("van", "car"),
    36: ("billboard", None),
    37: ("street-light", None),
    38: ("road-marking", "road"),
}
WILDDASH_MAX_ID = 38


def _wilddash_lut() -> np.ndarray:
    lut = csl.ID_TO_TRAIN_ID.copy()
    train_id = {name: i for i, name in enumerate(csl.TRAIN_CLASS_NAMES)}
    for label_id, (_, target) in WILDDASH_EXTRA_IDS.items():
        lut[label_id] = VOID if target is None else train_id[target]
    return lut


WILDDASH_TO_TRAIN_ID = _wilddash_lut()

# --- StreetHazards display colours ------------------------------------------------------------------------

# Colours of the 12 known StreetHazards classes in the order of densehybrid_ros.datasets.streethazards.CLASSES
# (unlabeled, building, fence, pedestrian, pole, road line, road, sidewalk, vegetation, car, wall, traffic
# sign), as in the DenseHybrid authors' StreetHazards colour table (``streethazards_labels.py``).
STREETHAZARDS_COLORS: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0), (70, 70, 70), (190, 153, 153), (220, 20, 60), (153, 153, 153), (255, 255, 255),
    (128, 64, 128), (244, 35, 232), (107, 142, 35), (0, 0, 142), (102, 102, 156), (220, 220, 0),
)

# --- negatives: classes that overlap the road-scene taxonomy ----------------------------------------------

# ADE20K SceneParsing-150 class ids never used as negatives (file value = id; 0 = "other" is never a class).
# Chosen so that no pasted pixel shows something a road-scene model must call a known class: the 19
# Cityscapes classes and their usual look-alikes (house/skyscraper/tower/hovel -> building, tree/plant/palm ->
# vegetation, grass/earth/field/sand/land/dirt track/hill/mountain -> terrain, path -> sidewalk, railing ->
# fence, signboard -> traffic sign, streetlight -> pole, van -> car, minibike -> motorcycle).
ADE20K_EXCLUDED: dict[int, str] = {
    1: "wall", 2: "building", 3: "sky", 5: "tree", 7: "road", 10: "grass", 12: "sidewalk", 13: "person",
    14: "earth", 17: "mountain", 18: "plant", 21: "car", 26: "house", 30: "field", 33: "fence", 39: "railing",
    44: "signboard", 47: "sand", 49: "skyscraper", 53: "path", 69: "hill", 73: "palm", 80: "hovel", 81: "bus",
    84: "truck", 85: "tower", 88: "streetlight", 92: "dirt track", 94: "pole", 95: "land", 103: "van",
    117: "minibike", 128: "bicycle", 137: "traffic light",
}
ADE20K_NUM_CLASSES = 150

# Full ADE20K (ADE20K_2021_17_01) names are WordNet-style synonym lists ("car, auto, automobile, machine,
# motorcar"). An object is excluded when any of its comma-separated synonyms is in this set: the synonyms of
# the excluded SceneParsing-150 classes above plus the Cityscapes classes that list does not reach
# (rider, motorcycle, train, traffic sign).
ADE20K_FULL_EXCLUDED_NAMES: frozenset[str] = frozenset({
    "wall", "building", "edifice", "sky", "tree", "road", "route", "grass", "sidewalk", "pavement", "person",
    "individual", "someone", "somebody", "mortal", "soul", "earth", "ground", "mountain", "mount", "plant",
    "flora", "plant life", "car", "auto", "automobile", "motorcar", "house", "field", "fence", "fencing",
    "railing", "rail", "signboard", "sign", "traffic sign", "street sign", "sand", "skyscraper", "path", "hill",
    "palm", "palm tree", "hovel", "hut", "shack", "shanty", "bus", "autobus", "coach", "double-decker", "motorbus",
    "omnibus", "truck", "motortruck", "tower", "streetlight", "street lamp", "dirt track", "pole", "land",
    "soil", "van", "minibike", "motorbike", "motorcycle", "bicycle", "bike", "cycle", "traffic light",
    "traffic signal", "stoplight", "rider", "cyclist", "bicyclist", "motorcyclist", "train", "railroad train",
    "tram", "streetcar", "trolley",
})


def ade20k_full_is_excluded(name: str) -> bool:
    """Whether a full-ADE20K object name (comma-separated synonyms) denotes an inlier road-scene class."""
    return any(part.strip().lower() in ADE20K_FULL_EXCLUDED_NAMES for part in name.split(","))


# COCO 2017 categories that are road-scene inlier classes (Cityscapes person/rider, vehicles, traffic light,
# traffic sign), matched by the category names of the annotation file.
COCO_EXCLUDED_NAMES: frozenset[str] = frozenset({
    "person", "bicycle", "car", "motorcycle", "bus", "train", "truck", "traffic light", "stop sign",
})
