"""Reads a snapshot's DICOM report and segmentation with highdicom (a reference reader, not our
code) and prints what it found as JSON: the TID 1500 measurement groups with each measurement's
concept, value and unit, and each segment's pixels compared with the snapshot's mask.png.

Usage: dicom_check.py SNAPSHOT_DIR
       dicom_check.py --seg SEG_FILE --mask MASK_PNG   (only the segmentation's segments)
"""
import json
import sys
from pathlib import Path

import highdicom as hd
import numpy as np
from PIL import Image


def segments(seg_file: Path, mask_png: Path) -> list:
    seg = hd.seg.segread(seg_file)
    mask = np.asarray(Image.open(mask_png).convert("L")) > 127
    source = seg.SourceImageSequence[0].ReferencedSOPInstanceUID
    out = []
    for n in seg.segment_numbers:
        d = seg.get_segment_description(n)
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=[source], segment_numbers=[n]
        )[0, :, :, 0].astype(bool)
        out.append({
            "number": int(n),
            "label": d.segment_label,
            "type": d.segmented_property_type.value,
            "algorithm_type": d.algorithm_type.value,
            "pixels": int(pixels.sum()),
            "equals_mask_png": bool(pixels.shape == mask.shape and (pixels == mask).all()),
        })
    return out


def main() -> None:
    if sys.argv[1] == "--seg":
        print(json.dumps({"segments": segments(Path(sys.argv[2]), Path(sys.argv[4]))}))
        return
    snap = Path(sys.argv[1])
    sr = hd.sr.srread(snap / "sr.dcm")
    out = {"template": None, "groups": [], "segments": []}
    out["template"] = sr.ContentTemplateSequence[0].TemplateIdentifier
    groups = sr.content.get_planar_roi_measurement_groups()
    for g in groups:
        measurements = []
        for m in g.get_measurements():
            derivation = m.derivation
            measurements.append({
                "code": m.name.value,
                "scheme": m.name.scheme_designator,
                "meaning": m.name.meaning,
                "value": float(m.value),
                "unit": m.unit.value,
                "derivation": derivation.value if derivation is not None else None,
            })
        evaluations = [
            {"name": q.name.value, "value": q.value.value}
            for q in g.get_qualitative_evaluations()
        ]
        ref = g.reference_type.meaning
        seg_ref = g.roi is None and g.referenced_segmentation_frame
        out["groups"].append({
            "tracking": g.tracking_identifier,
            "reference": ref,
            "frame": int(seg_ref.referenced_frame_numbers[0]) if seg_ref else None,
            "measurements": measurements,
            "evaluations": evaluations,
        })
    out["segments"] = segments(snap / "seg.dcm", snap / "mask.png")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
