//! The snapshot's masks as a DICOM Segmentation (`seg.dcm`, Segmentation Storage, BINARY): one
//! frame per segment (the primary model's structure, then each extra model's), each segment's category and type from
//! CID 7150 / 7151, the algorithm that made it, and the derivation from `image.dcm` (Derivation
//! Image, Source Image and Referenced Series all point at it). A frame grabbed from a scanner's
//! video output has no Frame of Reference, so the object has none, and Patient Orientation is
//! present and empty as in the image. Written even when the mask is empty (an empty frame).
//! Must not depend on the daemon, D-Bus or HTTP: it turns a mask into an object.

use dicom_core::VR;
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;

use super::{code, el, empty, new_object, seq, sop_ref, Code, Exam};
use crate::frame::GrayImage;
use crate::model::Task;

/// Who drew the mask (the Segment Algorithm Type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentAlgorithm {
    /// A model (`AUTOMATIC`).
    Automatic,
    /// A person, e.g. a label accepted in `/review` (`MANUAL`).
    Manual,
}

/// What a task's mask shows: segmented property category (CID 7150), type (CID 7151) and the
/// segment label.
pub fn segment_property(task: Task) -> (Code<'static>, Code<'static>, &'static str) {
    match task {
        // The aponeuroses: sheets of dense connective tissue bounding the muscle belly.
        Task::Aponeurosis => (
            ("85756007", "SCT", "Tissue"),
            ("21793004", "SCT", "Connective tissue"),
            "aponeuroses",
        ),
        // Fascicle fragments: bundles of muscle fibres.
        Task::Fascicle => (
            ("85756007", "SCT", "Tissue"),
            ("91727004", "SCT", "Muscle"),
            "fascicles",
        ),
        Task::Region => (
            ("91723000", "SCT", "Anatomical Structure"),
            ("69536005", "SCT", "Head"),
            "fetal head",
        ),
    }
}

/// Masks as DICOM BINARY frame data: one bit per pixel, row by row and frame after frame with
/// no gap between frames, the first pixel in the lowest bit of the first byte (PS3.5 8.1.1),
/// padded to an even length. A pixel is set where the mask is above 127 (the structure).
pub fn pack_bits<'a>(masks: impl IntoIterator<Item = &'a GrayImage>) -> Vec<u8> {
    let mut out: Vec<u8> = Vec::new();
    let mut i = 0usize;
    for mask in masks {
        let px = mask.as_slice();
        out.resize((i + px.len()).div_ceil(8), 0);
        for &v in px {
            if v > 127 {
                out[i / 8] |= 1 << (i % 8);
            }
            i += 1;
        }
    }
    if out.len() % 2 == 1 {
        out.push(0);
    }
    out
}

/// One segment: a task's mask and the model that made it.
pub struct Segment<'a> {
    pub task: Task,
    /// The mask over the whole frame (the size of the source image), >127: the structure.
    pub mask: &'a GrayImage,
    /// The model file (or, for a manual mask, who or what drew it) and its version (sha256).
    pub algorithm_name: &'a str,
    pub algorithm_version: &'a str,
}

/// What a Segmentation is made of.
pub struct SegInput<'a> {
    /// The segments, numbered from 1 in this order; frame N holds segment N.
    pub segments: &'a [Segment<'a>],
    pub algorithm: SegmentAlgorithm,
    /// The source image (`image.dcm`): its SOP instance UID.
    pub source_uid: &'a str,
    /// Content time, CLOCK_REALTIME µs (the frame's capture time).
    pub content_us: i64,
    pub instance: u32,
}

/// The Segmentation object; returns it with its SOP instance UID.
pub fn segmentation(exam: &Exam, s: &SegInput<'_>) -> (InMemDicomObject, String) {
    let (mut o, uid) = new_object(exam, uids::SEGMENTATION_STORAGE, s.content_us);
    let us = uids::ULTRASOUND_IMAGE_STORAGE;
    let source = |purpose: bool| {
        let mut item = sop_ref(us, s.source_uid);
        if purpose {
            item.put(el(tags::SPATIAL_LOCATIONS_PRESERVED, VR::CS, "YES"));
            item.put(seq(
                tags::PURPOSE_OF_REFERENCE_CODE_SEQUENCE,
                vec![code(
                    "121322",
                    "DCM",
                    "Source image for image processing operation",
                )],
            ));
        }
        item
    };
    let segment = |number: u16, g: &Segment<'_>| {
        let (category, kind, label) = segment_property(g.task);
        let mut segment = InMemDicomObject::from_element_iter([
            el(tags::SEGMENT_NUMBER, VR::US, number),
            el(tags::SEGMENT_LABEL, VR::LO, label),
            seq(
                tags::SEGMENTED_PROPERTY_CATEGORY_CODE_SEQUENCE,
                vec![code(category.0, category.1, category.2)],
            ),
            seq(
                tags::SEGMENTED_PROPERTY_TYPE_CODE_SEQUENCE,
                vec![code(kind.0, kind.1, kind.2)],
            ),
        ]);
        match s.algorithm {
            SegmentAlgorithm::Automatic => {
                segment.put(el(tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "AUTOMATIC"));
                segment.put(el(tags::SEGMENT_ALGORITHM_NAME, VR::LO, g.algorithm_name));
                segment.put(seq(
                    tags::SEGMENTATION_ALGORITHM_IDENTIFICATION_SEQUENCE,
                    vec![InMemDicomObject::from_element_iter([
                        seq(
                            tags::ALGORITHM_FAMILY_CODE_SEQUENCE,
                            vec![code("123110", "DCM", "Artificial Intelligence")],
                        ),
                        el(tags::ALGORITHM_NAME, VR::LO, g.algorithm_name),
                        el(tags::ALGORITHM_VERSION, VR::LO, g.algorithm_version),
                    ])],
                ));
            }
            SegmentAlgorithm::Manual => {
                segment.put(el(tags::SEGMENT_ALGORITHM_TYPE, VR::CS, "MANUAL"));
            }
        }
        segment
    };
    // One dimension: the segment a frame belongs to.
    let dimension_uid = super::new_uid();
    let per_frame = |number: u16| {
        InMemDicomObject::from_element_iter([
            seq(
                tags::DERIVATION_IMAGE_SEQUENCE,
                vec![InMemDicomObject::from_element_iter([
                    seq(tags::SOURCE_IMAGE_SEQUENCE, vec![source(true)]),
                    seq(
                        tags::DERIVATION_CODE_SEQUENCE,
                        vec![code("113076", "DCM", "Segmentation")],
                    ),
                ])],
            ),
            seq(
                tags::FRAME_CONTENT_SEQUENCE,
                vec![InMemDicomObject::from_element_iter([el(
                    tags::DIMENSION_INDEX_VALUES,
                    VR::UL,
                    number as u32,
                )])],
            ),
            seq(
                tags::SEGMENT_IDENTIFICATION_SEQUENCE,
                vec![InMemDicomObject::from_element_iter([el(
                    tags::REFERENCED_SEGMENT_NUMBER,
                    VR::US,
                    number,
                )])],
            ),
        ])
    };
    let numbers = 1..=s.segments.len() as u16;
    let (rows, columns) = s
        .segments
        .first()
        .map(|g| (g.mask.height(), g.mask.width()))
        .unwrap_or((0, 0));
    let manual = s.algorithm == SegmentAlgorithm::Manual;
    for e in [
        el(tags::MODALITY, VR::CS, "SEG"),
        el(
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            exam.seg_series_uid.as_str(),
        ),
        el(tags::SERIES_NUMBER, VR::IS, "3"),
        el(tags::SERIES_DESCRIPTION, VR::LO, "pocusd segmentations"),
        el(
            tags::INSTANCE_NUMBER,
            VR::IS,
            s.instance.to_string().as_str(),
        ),
        // Enhanced General Equipment (all Type 1 here).
        el(
            tags::DEVICE_SERIAL_NUMBER,
            VR::LO,
            super::device_serial().as_str(),
        ),
        empty(tags::PATIENT_ORIENTATION, VR::CS),
        el(tags::IMAGE_TYPE, VR::CS, "DERIVED\\PRIMARY"),
        el(
            tags::CONTENT_LABEL,
            VR::CS,
            if manual { "LABEL" } else { "MASK" },
        ),
        el(
            tags::CONTENT_DESCRIPTION,
            VR::LO,
            if manual {
                "pocusd: a mask accepted in review"
            } else {
                "pocusd: the model's mask of the frame"
            },
        ),
        empty(tags::CONTENT_CREATOR_NAME, VR::PN),
        el(tags::SEGMENTATION_TYPE, VR::CS, "BINARY"),
        el(tags::SEGMENTS_OVERLAP, VR::CS, "NO"),
        seq(
            tags::SEGMENT_SEQUENCE,
            numbers
                .clone()
                .zip(s.segments)
                .map(|(n, g)| segment(n, g))
                .collect(),
        ),
        seq(
            tags::DIMENSION_ORGANIZATION_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([el(
                tags::DIMENSION_ORGANIZATION_UID,
                VR::UI,
                dimension_uid.as_str(),
            )])],
        ),
        seq(
            tags::DIMENSION_INDEX_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([
                el(
                    tags::DIMENSION_ORGANIZATION_UID,
                    VR::UI,
                    dimension_uid.as_str(),
                ),
                el(
                    tags::DIMENSION_INDEX_POINTER,
                    VR::AT,
                    dicom_core::PrimitiveValue::Tags(
                        [tags::REFERENCED_SEGMENT_NUMBER].into_iter().collect(),
                    ),
                ),
                el(
                    tags::FUNCTIONAL_GROUP_POINTER,
                    VR::AT,
                    dicom_core::PrimitiveValue::Tags(
                        [tags::SEGMENT_IDENTIFICATION_SEQUENCE]
                            .into_iter()
                            .collect(),
                    ),
                ),
                el(
                    tags::DIMENSION_DESCRIPTION_LABEL,
                    VR::LO,
                    "Referenced Segment Number",
                ),
            ])],
        ),
        seq(
            tags::SHARED_FUNCTIONAL_GROUPS_SEQUENCE,
            vec![InMemDicomObject::new_empty()],
        ),
        seq(
            tags::PER_FRAME_FUNCTIONAL_GROUPS_SEQUENCE,
            numbers.clone().map(per_frame).collect(),
        ),
        el(
            tags::NUMBER_OF_FRAMES,
            VR::IS,
            s.segments.len().to_string().as_str(),
        ),
        seq(tags::SOURCE_IMAGE_SEQUENCE, vec![source(false)]),
        seq(
            tags::REFERENCED_SERIES_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([
                el(
                    tags::SERIES_INSTANCE_UID,
                    VR::UI,
                    exam.image_series_uid.as_str(),
                ),
                seq(tags::REFERENCED_INSTANCE_SEQUENCE, vec![source(false)]),
            ])],
        ),
        el(tags::SAMPLES_PER_PIXEL, VR::US, 1u16),
        el(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, "MONOCHROME2"),
        el(tags::ROWS, VR::US, rows as u16),
        el(tags::COLUMNS, VR::US, columns as u16),
        el(tags::BITS_ALLOCATED, VR::US, 1u16),
        el(tags::BITS_STORED, VR::US, 1u16),
        el(tags::HIGH_BIT, VR::US, 0u16),
        el(tags::PIXEL_REPRESENTATION, VR::US, 0u16),
        el(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"),
        el(
            tags::PIXEL_DATA,
            VR::OB,
            pack_bits(s.segments.iter().map(|g| g.mask)),
        ),
    ] {
        o.put(e);
    }
    (o, uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_packed_lowest_first_and_padded_to_even() {
        // 3x3: pixels 0, 4 and 8 set (the diagonal), 9 bits -> 2 bytes.
        let mut m = GrayImage::new(3, 3);
        for i in [0, 4, 8] {
            m.as_mut_slice()[i] = 255;
        }
        m.as_mut_slice()[1] = 127; // not above 127: background
        assert_eq!(pack_bits([&m]), vec![0b0001_0001, 0b0000_0001]);
        // 5x5 = 25 bits -> 4 bytes, 3 padded to 4.
        assert_eq!(pack_bits([&GrayImage::new(5, 5)]).len(), 4);
        // Frames follow each other without a gap: the second frame's first pixel is bit 9.
        let mut second = GrayImage::new(3, 3);
        second.as_mut_slice()[0] = 255;
        assert_eq!(
            pack_bits([&m, &second]),
            vec![0b0001_0001, 0b0000_0011, 0, 0]
        );
    }
}
