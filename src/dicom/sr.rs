//! The snapshot's numbers as a TID 1500 Imaging Measurement Report (`sr.dcm`, Comprehensive 3D
//! SR), the form IHE AI Results (AIR) asks of an AI result producer: the observer is the device,
//! the image library lists `image.dcm`, and each finding is one Measurement Group with its
//! tracking identifier and UID, finding and finding site, the algorithm (model file and sha256,
//! the calibration as its parameters), the numbers as NUM items with standard concept names
//! (LOINC, SNOMED CT) and UCUM units, each qualified by its Derivation where the concept is
//! generic, and the quality verdict as qualitative evaluations. Each group is a TID 1410 planar
//! ROI group that references the Segmentation frame (`seg.dcm`) of the mask its numbers come
//! from: the primary model's, and an extra model's (fascicles beside aponeuroses) for its own.
//! What has no standard code is coded in the declared private scheme `99POCUSD` (docs/dicom.md
//! lists them). Must not depend on the daemon, D-Bus or HTTP.

use dicom_core::{DataElement, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::InMemDicomObject;

use super::{code, el, new_object, new_uid, seq, sop_ref, Code, Exam, SCHEME};
use crate::model::Task;
use crate::postprocess::quality::Doubts;
use crate::publish::measurement::Measurement;

const MEDIAN: Code = ("373099004", "SCT", "Median");
const MINIMUM: Code = ("255605001", "SCT", "Minimum");
const MAXIMUM: Code = ("56851009", "SCT", "Maximum");

/// How a measurement key is coded: its concept name, its derivation (for a generic concept) and
/// its UCUM unit. Keys not listed here have no standard concept and get a private code.
struct Coding {
    concept: Code<'static>,
    derivation: Option<Code<'static>>,
}

/// The standard coding of a measurement key of `task`, if there is one.
fn standard(task: Task, key: &str) -> Option<Coding> {
    let thickness = ("59089-3", "LN", "Thickness");
    let c = |concept, derivation| {
        Some(Coding {
            concept,
            derivation,
        })
    };
    match key {
        // The median over the columns where both aponeuroses are found.
        "thickness_mm" => c(thickness, Some(MEDIAN)),
        "thickness_min_mm" => c(thickness, Some(MINIMUM)),
        "thickness_max_mm" => c(thickness, Some(MAXIMUM)),
        "fascicle_length_mm" => c(("410668003", "SCT", "Length"), Some(MEDIAN)),
        "pennation_angle_deg" => c(("1483009", "SCT", "Angle"), Some(MEDIAN)),
        "area_mm2" => c(("42798000", "SCT", "Area"), None),
        "perimeter_mm" => c(("131191004", "SCT", "Perimeter"), None),
        // The region task is the fetal head: the circumference of the fitted ellipse, as HC18
        // and the obstetric charts define it.
        "circumference_mm" if task == Task::Region => {
            c(("11984-2", "LN", "Head Circumference"), None)
        }
        "circumference_mm" => c(("74551000", "SCT", "Circumference"), None),
        _ => None,
    }
}

/// A private concept for a key without a standard one, in words.
fn private_meaning(key: &str) -> String {
    match key {
        "thickness_centre_mm" => "Thickness at the centre column".into(),
        "band_angle_deg" => "Aponeurosis angle to the image rows".into(),
        "fascicle_length_spread_mm" => "Fascicle length interquartile range".into(),
        "pennation_angle_spread_deg" => "Pennation angle interquartile range".into(),
        "fascicle_orientation_deg" => "Fascicle orientation to the image rows".into(),
        "ellipse_angle_deg" => "Ellipse axis angle to the image rows".into(),
        _ => key.replace('_', " "),
    }
}

/// The UCUM unit of a key by its suffix (the keys carry their units); `None`: not a physical
/// value (pixels, counts), which stay out of the report.
pub fn ucum(key: &str) -> Option<Code<'static>> {
    if key.ends_with("_mm2") {
        Some(("mm2", "UCUM", "square millimeter"))
    } else if key.ends_with("_mm") {
        Some(("mm", "UCUM", "millimeter"))
    } else if key.ends_with("_deg") {
        Some(("deg", "UCUM", "degree"))
    } else {
        None
    }
}

/// Which task's group a measurement key belongs to when `primary` ran with extra models: the
/// fascicle keys come from a fascicle model, the others from the primary.
fn key_task(primary: Task, key: &str) -> Task {
    if key.starts_with("fascicle_") || key.starts_with("pennation_") {
        Task::Fascicle
    } else {
        primary
    }
}

/// The finding site of a task's numbers.
fn finding_site(task: Task) -> Code<'static> {
    match task {
        Task::Aponeurosis | Task::Fascicle => ("127954009", "SCT", "Skeletal muscle"),
        Task::Region => ("69536005", "SCT", "Head"),
    }
}

fn item(relation: &str, value_type: &str, name: Code) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        el(tags::RELATIONSHIP_TYPE, VR::CS, relation),
        el(tags::VALUE_TYPE, VR::CS, value_type),
        seq(
            tags::CONCEPT_NAME_CODE_SEQUENCE,
            vec![code(name.0, name.1, name.2)],
        ),
    ])
}

fn code_item(relation: &str, name: Code<'_>, value: Code<'_>) -> InMemDicomObject {
    let mut o = item(relation, "CODE", name);
    o.put(seq(
        tags::CONCEPT_CODE_SEQUENCE,
        vec![code(value.0, value.1, value.2)],
    ));
    o
}

fn text_item(relation: &str, name: Code, text: &str) -> InMemDicomObject {
    let mut o = item(relation, "TEXT", name);
    o.put(el(tags::TEXT_VALUE, VR::UT, text));
    o
}

fn uid_item(relation: &str, name: Code, uid: &str) -> InMemDicomObject {
    let mut o = item(relation, "UIDREF", name);
    o.put(el(tags::UID, VR::UI, uid));
    o
}

/// A Content Template Sequence naming DCMR template `id`.
fn template(id: &str) -> DataElement<InMemDicomObject> {
    seq(
        tags::CONTENT_TEMPLATE_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            el(tags::MAPPING_RESOURCE, VR::CS, "DCMR"),
            el(tags::TEMPLATE_IDENTIFIER, VR::CS, id),
        ])],
    )
}

fn container(relation: &str, name: Code, template_id: Option<&str>) -> InMemDicomObject {
    let mut o = item(relation, "CONTAINER", name);
    o.put(el(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"));
    if let Some(t) = template_id {
        o.put(template(t));
    }
    o
}

fn with_children(mut o: InMemDicomObject, children: Vec<InMemDicomObject>) -> InMemDicomObject {
    if !children.is_empty() {
        o.put(seq(tags::CONTENT_SEQUENCE, children));
    }
    o
}

fn image_item(
    relation: &str,
    name: Code,
    class: &str,
    uid: &str,
    frame: Option<u32>,
) -> InMemDicomObject {
    let mut r = sop_ref(class, uid);
    if let Some(f) = frame {
        r.put(el(
            tags::REFERENCED_FRAME_NUMBER,
            VR::IS,
            f.to_string().as_str(),
        ));
    }
    let mut o = item(relation, "IMAGE", name);
    o.put(seq(tags::REFERENCED_SOP_SEQUENCE, vec![r]));
    o
}

fn num_item(name: Code, value: f64, unit: Code, derivation: Option<Code>) -> InMemDicomObject {
    let measured = InMemDicomObject::from_element_iter([
        seq(
            tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
            vec![code(unit.0, unit.1, unit.2)],
        ),
        el(tags::NUMERIC_VALUE, VR::DS, super::ds(value).as_str()),
        el(tags::FLOATING_POINT_VALUE, VR::FD, value),
    ]);
    let mut o = item("CONTAINS", "NUM", name);
    o.put(seq(tags::MEASURED_VALUE_SEQUENCE, vec![measured]));
    let children = derivation
        .map(|d| {
            vec![code_item(
                "HAS CONCEPT MOD",
                ("121401", "DCM", "Derivation"),
                d,
            )]
        })
        .unwrap_or_default();
    with_children(o, children)
}

/// The verdict as qualitative evaluations: `ok` / `doubtful`, then one item per reason.
fn verdict_items(doubt: Doubts) -> Vec<InMemDicomObject> {
    let mut v = vec![code_item(
        "CONTAINS",
        ("quality", SCHEME, "Measurement quality"),
        (doubt.quality(), SCHEME, doubt.quality()),
    )];
    for d in doubt.iter() {
        v.push(code_item(
            "CONTAINS",
            ("doubt_reason", SCHEME, "Reason for doubt"),
            (d.as_str(), SCHEME, d.words()),
        ));
    }
    v
}

/// The model that made a group's numbers.
#[derive(Debug, Clone, PartialEq)]
pub struct Algorithm {
    /// The model file's name (`aponeurosis.onnx`).
    pub name: String,
    /// Its sha256.
    pub version: String,
}

/// What the report references and who made it.
pub struct ReportInput<'a> {
    pub record: &'a Measurement,
    /// The primary model, then the extra models by task.
    pub primary: &'a Algorithm,
    pub extras: &'a [(Task, Algorithm)],
    /// `image.dcm`'s and `seg.dcm`'s SOP instance UIDs.
    pub image_uid: &'a str,
    pub seg_uid: &'a str,
    /// The tasks of the Segmentation's frames (frame N: the N-th); a task's numbers are
    /// reported only with its frame (a TID 1410 group references the region it measured).
    pub seg_frames: &'a [Task],
    /// The snapshot's number in the exam (the report's instance number).
    pub instance: u32,
}

/// The Comprehensive 3D SR holding the TID 1500 report.
pub fn report(exam: &Exam, r: &ReportInput<'_>) -> InMemDicomObject {
    let record = r.record;
    let (mut o, _) = new_object(exam, uids::COMPREHENSIVE3_DSR_STORAGE, record.timestamp_us);
    let us = uids::ULTRASOUND_IMAGE_STORAGE;
    let seg_class = uids::SEGMENTATION_STORAGE;

    // The numbers by the task whose model made them.
    let values = serde_json::to_value(&record.measurements).unwrap_or_default();
    let mut by_task: Vec<(Task, Vec<InMemDicomObject>)> = Vec::new();
    if let Some(map) = values.as_object() {
        for (k, v) in map {
            let (Some(unit), Some(x)) = (ucum(k), v.as_f64()) else {
                continue;
            };
            if !x.is_finite() {
                continue;
            }
            let task = key_task(record.task, k);
            let num = match standard(record.task, k) {
                Some(c) => num_item(c.concept, x, unit, c.derivation),
                None => num_item(
                    (&super::short_code(k), SCHEME, &private_meaning(k)),
                    x,
                    unit,
                    None,
                ),
            };
            match by_task.iter_mut().find(|(t, _)| *t == task) {
                Some((_, v)) => v.push(num),
                None => by_task.push((task, vec![num])),
            }
        }
    }
    // The primary's group first, even without numbers (its verdict says why).
    if !by_task.iter().any(|(t, _)| *t == record.task) {
        by_task.insert(0, (record.task, Vec::new()));
    }
    by_task.sort_by_key(|(t, _)| *t != record.task);

    let calibration =
        crate::publish::measurement::calibration_json(&record.calibration, &record.manual);
    let mut groups = Vec::new();
    for (task, nums) in by_task {
        let primary = task == record.task;
        let Some(frame) = r.seg_frames.iter().position(|t| *t == task) else {
            // An extra model's numbers come with its mask (the same outcome); without one
            // they have no region to reference and stay in measurement.json only.
            continue;
        };
        let (algorithm, doubt) = if primary {
            (Some(r.primary), record.doubt)
        } else {
            // An extra model's numbers travel with its own verdict; without one (never seen:
            // both come from the same outcome) they are not reported rather than shown under
            // another model's verdict.
            let Some(doubt) = record
                .extra_doubt
                .iter()
                .find(|(t, _)| *t == task)
                .map(|(_, d)| *d)
            else {
                continue;
            };
            (
                r.extras.iter().find(|(t, _)| *t == task).map(|(_, a)| a),
                doubt,
            )
        };
        let label = match task {
            Task::Aponeurosis => "muscle thickness",
            Task::Fascicle => "fascicles",
            Task::Region => "fetal head",
        };
        let mut items = vec![
            text_item(
                "HAS OBS CONTEXT",
                ("112039", "DCM", "Tracking Identifier"),
                &format!("{label}, snapshot {}", r.instance),
            ),
            uid_item(
                "HAS OBS CONTEXT",
                ("112040", "DCM", "Tracking Unique Identifier"),
                &new_uid(),
            ),
            code_item(
                "CONTAINS",
                ("121071", "DCM", "Finding"),
                ("91723000", "SCT", "Anatomical Structure"),
            ),
            code_item(
                "HAS CONCEPT MOD",
                ("363698007", "SCT", "Finding Site"),
                finding_site(task),
            ),
        ];
        if let Some(a) = algorithm {
            items.push(text_item(
                "HAS CONCEPT MOD",
                ("111001", "DCM", "Algorithm Name"),
                &a.name,
            ));
            items.push(text_item(
                "HAS CONCEPT MOD",
                ("111003", "DCM", "Algorithm Version"),
                &a.version,
            ));
            items.push(text_item(
                "HAS CONCEPT MOD",
                ("111002", "DCM", "Algorithm Parameters"),
                &format!("calibration {calibration}"),
            ));
        }
        items.extend(nums);
        items.extend(verdict_items(doubt));
        items.push(image_item(
            "CONTAINS",
            ("121214", "DCM", "Referenced Segmentation Frame"),
            seg_class,
            r.seg_uid,
            Some(frame as u32 + 1),
        ));
        items.push(image_item(
            "CONTAINS",
            ("121233", "DCM", "Source image for segmentation"),
            us,
            r.image_uid,
            None,
        ));
        groups.push(with_children(
            container(
                "CONTAINS",
                ("125007", "DCM", "Measurement Group"),
                Some("1410"),
            ),
            items,
        ));
    }

    let mut source = image_item(
        "CONTAINS",
        ("260753009", "SCT", "Source"),
        us,
        r.image_uid,
        None,
    );
    source.put(seq(
        tags::CONTENT_SEQUENCE,
        vec![code_item(
            "HAS ACQ CONTEXT",
            ("121139", "DCM", "Modality"),
            ("US", "DCM", "Ultrasound"),
        )],
    ));
    let library = with_children(
        container("CONTAINS", ("111028", "DCM", "Image Library"), None),
        vec![with_children(
            container("CONTAINS", ("126200", "DCM", "Image Library Group"), None),
            vec![source],
        )],
    );
    let content = vec![
        code_item(
            "HAS CONCEPT MOD",
            ("121049", "DCM", "Language of Content Item and Descendants"),
            ("en-US", "RFC5646", "English (United States)"),
        ),
        code_item(
            "HAS OBS CONTEXT",
            ("121005", "DCM", "Observer Type"),
            ("121007", "DCM", "Device"),
        ),
        uid_item(
            "HAS OBS CONTEXT",
            ("121012", "DCM", "Device Observer UID"),
            &super::device_observer_uid(),
        ),
        text_item(
            "HAS OBS CONTEXT",
            ("121013", "DCM", "Device Observer Name"),
            "pocusd",
        ),
        text_item(
            "HAS OBS CONTEXT",
            ("121014", "DCM", "Device Observer Manufacturer"),
            "pocusd",
        ),
        code_item(
            "HAS CONCEPT MOD",
            ("121058", "DCM", "Procedure reported"),
            ("363679005", "SCT", "Imaging procedure"),
        ),
        library,
        with_children(
            container("CONTAINS", ("126010", "DCM", "Imaging Measurements"), None),
            groups,
        ),
    ];

    let series = |series_uid: &str, refs: Vec<InMemDicomObject>| {
        InMemDicomObject::from_element_iter([
            el(tags::SERIES_INSTANCE_UID, VR::UI, series_uid),
            seq(tags::REFERENCED_SOP_SEQUENCE, refs),
        ])
    };
    let evidence = InMemDicomObject::from_element_iter([
        el(tags::STUDY_INSTANCE_UID, VR::UI, exam.study_uid.as_str()),
        seq(
            tags::REFERENCED_SERIES_SEQUENCE,
            vec![
                series(&exam.image_series_uid, vec![sop_ref(us, r.image_uid)]),
                series(&exam.seg_series_uid, vec![sop_ref(seg_class, r.seg_uid)]),
            ],
        ),
    ]);
    // Our private coding scheme, declared (PS3.3 C.12.1.1.5).
    o.put(seq(
        tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            el(tags::CODING_SCHEME_DESIGNATOR, VR::SH, SCHEME),
            el(
                tags::CODING_SCHEME_NAME,
                VR::ST,
                "pocusd measurement keys and verdicts",
            ),
            el(
                tags::CODING_SCHEME_RESPONSIBLE_ORGANIZATION,
                VR::ST,
                "the pocusd project (docs/dicom.md)",
            ),
        ])],
    ));
    for e in [
        el(tags::MODALITY, VR::CS, "SR"),
        el(
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            exam.sr_series_uid.as_str(),
        ),
        el(tags::SERIES_NUMBER, VR::IS, "2"),
        el(tags::SERIES_DESCRIPTION, VR::LO, "pocusd measurements"),
        seq(tags::REFERENCED_PERFORMED_PROCEDURE_STEP_SEQUENCE, vec![]),
        el(
            tags::INSTANCE_NUMBER,
            VR::IS,
            r.instance.to_string().as_str(),
        ),
        el(tags::COMPLETION_FLAG, VR::CS, "COMPLETE"),
        el(tags::VERIFICATION_FLAG, VR::CS, "UNVERIFIED"),
        seq(tags::PERFORMED_PROCEDURE_CODE_SEQUENCE, vec![]),
        seq(
            tags::CURRENT_REQUESTED_PROCEDURE_EVIDENCE_SEQUENCE,
            vec![evidence],
        ),
        el(tags::VALUE_TYPE, VR::CS, "CONTAINER"),
        seq(
            tags::CONCEPT_NAME_CODE_SEQUENCE,
            vec![code("126000", "DCM", "Imaging Measurement Report")],
        ),
        el(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"),
        template("1500"),
        seq(tags::CONTENT_SEQUENCE, content),
    ] {
        o.put(e);
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_get_standard_codes_where_there_are_some() {
        let t = standard(Task::Aponeurosis, "thickness_mm").unwrap();
        assert_eq!(t.concept.0, "59089-3");
        assert_eq!(t.derivation, Some(MEDIAN));
        assert_eq!(
            standard(Task::Region, "circumference_mm")
                .unwrap()
                .concept
                .0,
            "11984-2"
        );
        assert_eq!(
            standard(Task::Aponeurosis, "circumference_mm")
                .unwrap()
                .concept
                .0,
            "74551000"
        );
        assert!(standard(Task::Aponeurosis, "thickness_centre_mm").is_none());
        assert_eq!(
            key_task(Task::Aponeurosis, "pennation_angle_deg"),
            Task::Fascicle
        );
        assert_eq!(
            key_task(Task::Aponeurosis, "thickness_mm"),
            Task::Aponeurosis
        );
        assert_eq!(ucum("area_mm2").map(|u| u.0), Some("mm2"));
        assert_eq!(ucum("thickness_px"), None);
    }
}
