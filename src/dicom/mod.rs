//! DICOM for snapshots: the frame as an Ultrasound Image object (`image.dcm`, with the ruler's or
//! the configuration's scale as a US region calibration), the overlay as a second one
//! (`overlay.dcm`, RGB), and an Enhanced Structured Report (`sr.dcm`) with each measurement in mm,
//! mm2 or degrees as a numeric item with its UCUM unit, and the model's sha256, the calibration and
//! the quality flag as text items. Identity comes from an [`Exam`] (`SetExam` on D-Bus); without
//! one the files say `ANONYMOUS` and carry nothing personal. UIDs are `2.25.` + a random UUID.
//! The C-STORE client is [`net`], the spool that sends snapshots automatically [`spool`].
//! Must not depend on the daemon, D-Bus or HTTP: it turns values into files.

pub mod net;
pub mod spool;

use std::path::{Path, PathBuf};

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::{tags, uids};
use dicom_object::meta::FileMetaTableBuilder;
use dicom_object::InMemDicomObject;

use crate::frame::GrayImage;
use crate::postprocess::overlay::RgbImage;
use crate::publish::measurement::Measurement;

/// The files a snapshot holds, in the order they are sent.
pub const FILES: [&str; 3] = ["image.dcm", "overlay.dcm", "sr.dcm"];
/// Patient name and id when no exam was set.
pub const ANONYMOUS: &str = "ANONYMOUS";
/// Our implementation class UID (a fixed UUID-derived UID) and version name.
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.190148734335392614367219402587066913329";
pub const IMPLEMENTATION_VERSION: &str = concat!("POCUSD_", env!("CARGO_PKG_VERSION"));
/// The coding scheme of our own concept names (a private scheme, "99" prefix per PS3.16).
const SCHEME: &str = "99POCUSD";

/// What goes wrong writing or reading DICOM.
#[derive(Debug, thiserror::Error)]
pub enum DicomError {
    #[error("{field} {value:?} is not allowed: {reason}")]
    BadValue {
        field: &'static str,
        value: String,
        reason: String,
    },
    #[error("cannot build the DICOM object {file}: {message}")]
    Build { file: String, message: String },
    #[error("cannot write {}: {message}", path.display())]
    Write { path: PathBuf, message: String },
}

/// A new UID under the UUID root `2.25.` (PS3.5 B.2): a random 128-bit UUID (version 4) in
/// decimal.
pub fn new_uid() -> String {
    let mut b = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b));
    if random.is_err() {
        // No /dev/urandom: time, process and a counter, hashed (unique, if not unpredictable).
        use std::hash::{BuildHasher, Hasher};
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        for half in b.chunks_mut(8) {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_i64(crate::clock::realtime_us());
            h.write_u64(N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            half.copy_from_slice(&h.finish().to_le_bytes());
        }
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    format!("2.25.{}", u128::from_be_bytes(b))
}

/// Who and what the files belong to: set by `SetExam`, else anonymous. Each exam is one study
/// (its own Study Instance UID) with one image series and one report series.
#[derive(Debug, Clone, PartialEq)]
pub struct Exam {
    pub patient_id: Option<String>,
    pub patient_name: Option<String>,
    pub accession: Option<String>,
    pub study_uid: String,
    pub image_series_uid: String,
    pub sr_series_uid: String,
    /// When the exam started, CLOCK_REALTIME µs (the study date and time).
    pub started_us: i64,
    /// Snapshots numbered in this exam so far (see [`Exam::next_snapshot`]).
    pub snapshots: u32,
}

fn check_text(field: &'static str, v: &str, max: usize) -> Result<(), DicomError> {
    let bad = |reason: String| DicomError::BadValue {
        field,
        value: v.to_string(),
        reason,
    };
    if v.chars().count() > max {
        return Err(bad(format!("at most {max} characters")));
    }
    if v.chars().any(|c| c.is_control() || c == '\\') {
        return Err(bad("no control characters or backslashes".into()));
    }
    Ok(())
}

impl Exam {
    /// Numbers the next snapshot of this exam (1, 2, ...) and returns it with a copy of the exam
    /// to write it with, so a caller holding the exam behind a lock releases it before any I/O.
    pub fn next_snapshot(&mut self) -> (Exam, u32) {
        self.snapshots += 1;
        (self.clone(), self.snapshots)
    }

    /// The exam without identity, started at `now_us`.
    pub fn anonymous(now_us: i64) -> Self {
        Self {
            patient_id: None,
            patient_name: None,
            accession: None,
            study_uid: new_uid(),
            image_series_uid: new_uid(),
            sr_series_uid: new_uid(),
            started_us: now_us,
            snapshots: 0,
        }
    }

    /// A new exam (a new study) for this patient; empty strings mean "not given". Patient name
    /// in DICOM form (`FAMILY^GIVEN`), at most 64 characters like the id; accession at most 16.
    pub fn new(
        patient_id: &str,
        patient_name: &str,
        accession: &str,
        now_us: i64,
    ) -> Result<Self, DicomError> {
        let (id, name, acc) = (patient_id.trim(), patient_name.trim(), accession.trim());
        check_text("patient_id", id, 64)?;
        check_text("patient_name", name, 64)?;
        check_text("accession", acc, 16)?;
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        Ok(Self {
            patient_id: some(id),
            patient_name: some(name),
            accession: some(acc),
            ..Self::anonymous(now_us)
        })
    }
}

/// DICOM date and time (UTC) of a CLOCK_REALTIME time in µs.
fn da_tm(us: i64) -> (String, String) {
    let (y, mo, d, h, mi, s) = crate::clock::utc_parts(us.div_euclid(1_000_000));
    let frac = us.rem_euclid(1_000_000);
    (
        format!("{y:04}{mo:02}{d:02}"),
        format!("{h:02}{mi:02}{s:02}.{frac:06}"),
    )
}

fn el(tag: dicom_core::Tag, vr: VR, v: impl Into<PrimitiveValue>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, v.into())
}

fn empty(tag: dicom_core::Tag, vr: VR) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, vr, PrimitiveValue::Empty)
}

fn seq(tag: dicom_core::Tag, items: Vec<InMemDicomObject>) -> DataElement<InMemDicomObject> {
    DataElement::new(tag, VR::SQ, DataSetSequence::from(items))
}

fn code(value: &str, scheme: &str, meaning: &str) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        el(tags::CODE_VALUE, VR::SH, value),
        el(tags::CODING_SCHEME_DESIGNATOR, VR::SH, scheme),
        el(tags::CODE_MEANING, VR::LO, meaning),
    ])
}

/// A new object of `sop_class` with a new SOP instance UID and the patient, study, equipment and
/// SOP common attributes the three objects share; returns it with its UID.
fn new_object(exam: &Exam, sop_class: &str, content_us: i64) -> (InMemDicomObject, String) {
    let (study_date, study_time) = da_tm(exam.started_us);
    let (date, time) = da_tm(content_us);
    let name = exam.patient_name.as_deref().unwrap_or(ANONYMOUS);
    let id = exam.patient_id.as_deref().unwrap_or(ANONYMOUS);
    let uid = new_uid();
    let mut obj = InMemDicomObject::new_empty();
    for e in [
        el(tags::SPECIFIC_CHARACTER_SET, VR::CS, "ISO_IR 192"),
        el(tags::SOP_CLASS_UID, VR::UI, sop_class),
        el(tags::SOP_INSTANCE_UID, VR::UI, uid.as_str()),
        el(tags::INSTANCE_CREATION_DATE, VR::DA, date.as_str()),
        el(tags::INSTANCE_CREATION_TIME, VR::TM, time.as_str()),
        el(tags::PATIENT_NAME, VR::PN, name),
        el(tags::PATIENT_ID, VR::LO, id),
        empty(tags::PATIENT_BIRTH_DATE, VR::DA),
        empty(tags::PATIENT_SEX, VR::CS),
        el(tags::STUDY_INSTANCE_UID, VR::UI, exam.study_uid.as_str()),
        el(tags::STUDY_DATE, VR::DA, study_date.as_str()),
        el(tags::STUDY_TIME, VR::TM, study_time.as_str()),
        empty(tags::REFERRING_PHYSICIAN_NAME, VR::PN),
        // The study's start, UTC (SH, 14 characters): an id a DICOMDIR can list.
        el(
            tags::STUDY_ID,
            VR::SH,
            format!("{}{}", study_date, &study_time[..6]).as_str(),
        ),
        match &exam.accession {
            Some(a) => el(tags::ACCESSION_NUMBER, VR::SH, a.as_str()),
            None => empty(tags::ACCESSION_NUMBER, VR::SH),
        },
        el(tags::MANUFACTURER, VR::LO, "pocusd"),
        el(tags::MANUFACTURER_MODEL_NAME, VR::LO, "pocusd"),
        el(tags::SOFTWARE_VERSIONS, VR::LO, env!("CARGO_PKG_VERSION")),
        el(tags::CONTENT_DATE, VR::DA, date.as_str()),
        el(tags::CONTENT_TIME, VR::TM, time.as_str()),
    ] {
        obj.put(e);
    }
    (obj, uid)
}

/// An Ultrasound Image object of one 8-bit frame (grey, or RGB when `samples` is 3).
#[allow(clippy::too_many_arguments)]
fn us_image(
    exam: &Exam,
    instance: u32,
    series_number: u32,
    width: usize,
    height: usize,
    samples: u16,
    pixels: &[u8],
    record: &Measurement,
    derived: bool,
) -> (InMemDicomObject, String) {
    let (mut o, uid) = new_object(exam, uids::ULTRASOUND_IMAGE_STORAGE, record.timestamp_us);
    let (date, time) = da_tm(record.timestamp_us);
    let image_type = if derived {
        "DERIVED\\SECONDARY"
    } else {
        "ORIGINAL\\PRIMARY"
    };
    let mut px = pixels.to_vec();
    if px.len() % 2 == 1 {
        px.push(0);
    }
    for e in [
        el(tags::MODALITY, VR::CS, "US"),
        el(
            tags::SERIES_INSTANCE_UID,
            VR::UI,
            exam.image_series_uid.as_str(),
        ),
        el(
            tags::SERIES_NUMBER,
            VR::IS,
            series_number.to_string().as_str(),
        ),
        el(tags::SERIES_DESCRIPTION, VR::LO, "pocusd snapshots"),
        // Type 2C for US: dciodvfy requires it; empty, as the side is not known to the daemon.
        empty(tags::LATERALITY, VR::CS),
        el(tags::INSTANCE_NUMBER, VR::IS, instance.to_string().as_str()),
        empty(tags::PATIENT_ORIENTATION, VR::CS),
        el(
            tags::ACQUISITION_DATE_TIME,
            VR::DT,
            format!("{date}{time}").as_str(),
        ),
        el(tags::IMAGE_TYPE, VR::CS, image_type),
        el(
            tags::IMAGE_COMMENTS,
            VR::LT,
            if derived {
                "pocusd overlay: the model's mask and measurements drawn over the frame"
            } else {
                "pocusd snapshot: the frame as captured"
            },
        ),
        el(
            tags::BURNED_IN_ANNOTATION,
            VR::CS,
            if derived { "YES" } else { "NO" },
        ),
        el(tags::LOSSY_IMAGE_COMPRESSION, VR::CS, "00"),
        el(tags::SAMPLES_PER_PIXEL, VR::US, samples),
        el(
            tags::PHOTOMETRIC_INTERPRETATION,
            VR::CS,
            if samples == 3 { "RGB" } else { "MONOCHROME2" },
        ),
        el(tags::ROWS, VR::US, height as u16),
        el(tags::COLUMNS, VR::US, width as u16),
        el(tags::BITS_ALLOCATED, VR::US, 8u16),
        el(tags::BITS_STORED, VR::US, 8u16),
        el(tags::HIGH_BIT, VR::US, 7u16),
        el(tags::PIXEL_REPRESENTATION, VR::US, 0u16),
    ] {
        o.put(e);
    }
    if samples == 3 {
        o.put(el(tags::PLANAR_CONFIGURATION, VR::US, 0u16));
    }
    if let Some((x_mm, y_mm)) = record.calibration.mm_per_px {
        // The US region calibration: the whole frame as one 2D tissue region, in cm per pixel.
        let region = InMemDicomObject::from_element_iter([
            el(tags::REGION_SPATIAL_FORMAT, VR::US, 1u16),
            el(tags::REGION_DATA_TYPE, VR::US, 1u16),
            el(tags::REGION_FLAGS, VR::UL, 0u32),
            el(tags::REGION_LOCATION_MIN_X0, VR::UL, 0u32),
            el(tags::REGION_LOCATION_MIN_Y0, VR::UL, 0u32),
            el(
                tags::REGION_LOCATION_MAX_X1,
                VR::UL,
                width.saturating_sub(1) as u32,
            ),
            el(
                tags::REGION_LOCATION_MAX_Y1,
                VR::UL,
                height.saturating_sub(1) as u32,
            ),
            el(tags::PHYSICAL_UNITS_X_DIRECTION, VR::US, 3u16),
            el(tags::PHYSICAL_UNITS_Y_DIRECTION, VR::US, 3u16),
            el(tags::PHYSICAL_DELTA_X, VR::FD, x_mm / 10.0),
            el(tags::PHYSICAL_DELTA_Y, VR::FD, y_mm / 10.0),
        ]);
        o.put(seq(tags::SEQUENCE_OF_ULTRASOUND_REGIONS, vec![region]));
    }
    o.put(el(tags::PIXEL_DATA, VR::OB, px));
    (o, uid)
}

/// UCUM unit of a measurement key by its suffix (the keys carry their units).
fn ucum(key: &str) -> Option<(&'static str, &'static str)> {
    if key.ends_with("_mm2") {
        Some(("mm2", "square millimeter"))
    } else if key.ends_with("_mm") {
        Some(("mm", "millimeter"))
    } else if key.ends_with("_deg") {
        Some(("deg", "degree"))
    } else {
        None
    }
}

fn text_item(relation: &str, name: (&str, &str), text: &str) -> InMemDicomObject {
    InMemDicomObject::from_element_iter([
        el(tags::RELATIONSHIP_TYPE, VR::CS, relation),
        el(tags::VALUE_TYPE, VR::CS, "TEXT"),
        seq(
            tags::CONCEPT_NAME_CODE_SEQUENCE,
            vec![code(name.0, SCHEME, name.1)],
        ),
        el(tags::TEXT_VALUE, VR::UT, text),
    ])
}

fn num_item(key: &str, value: f64, unit: (&str, &str)) -> InMemDicomObject {
    let measured = InMemDicomObject::from_element_iter([
        seq(
            tags::MEASUREMENT_UNITS_CODE_SEQUENCE,
            vec![code(unit.0, "UCUM", unit.1)],
        ),
        el(tags::NUMERIC_VALUE, VR::DS, ds(value).as_str()),
        el(tags::FLOATING_POINT_VALUE, VR::FD, value),
    ]);
    InMemDicomObject::from_element_iter([
        el(tags::RELATIONSHIP_TYPE, VR::CS, "CONTAINS"),
        el(tags::VALUE_TYPE, VR::CS, "NUM"),
        seq(
            tags::CONCEPT_NAME_CODE_SEQUENCE,
            vec![code(&short_code(key), SCHEME, key)],
        ),
        seq(tags::MEASURED_VALUE_SEQUENCE, vec![measured]),
    ])
}

/// A decimal string of at most 16 characters (VR DS).
fn ds(v: f64) -> String {
    for prec in (0..=6).rev() {
        let s = format!("{v:.prec$}");
        if s.len() <= 16 {
            return s;
        }
    }
    format!("{v:.3e}")
}

/// A code value (VR SH, at most 16 characters) for a measurement key: the key itself when it
/// fits, else its start and a hash of the whole.
fn short_code(key: &str) -> String {
    if key.len() <= 16 {
        return key.to_string();
    }
    let h = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    format!("{}{:05x}", &key[..11], h & 0xfffff)
}

/// The Enhanced SR with the measurements, referencing the two images.
fn report(
    exam: &Exam,
    instance: u32,
    record: &Measurement,
    images: &[(&str, &str)],
) -> InMemDicomObject {
    let (mut o, _) = new_object(exam, uids::ENHANCED_SR_STORAGE, record.timestamp_us);
    let mut content = Vec::new();
    let values = serde_json::to_value(&record.measurements).unwrap_or_default();
    if let Some(map) = values.as_object() {
        for (k, v) in map {
            if let (Some(unit), Some(x)) = (ucum(k), v.as_f64()) {
                if x.is_finite() {
                    content.push(num_item(k, x, unit));
                }
            }
        }
    }
    content.push(text_item(
        "CONTAINS",
        ("model_sha256", "Model sha256"),
        &record.model_sha256,
    ));
    let calibration =
        crate::publish::measurement::calibration_json(&record.calibration, &record.manual);
    content.push(text_item(
        "CONTAINS",
        ("calibration", "Calibration"),
        &calibration.to_string(),
    ));
    content.push(text_item(
        "CONTAINS",
        ("task", "Task"),
        record.task.as_str(),
    ));
    content.push(text_item(
        "CONTAINS",
        ("quality_flag", "Quality flag"),
        record.flag.map(|f| f.as_str()).unwrap_or("none"),
    ));
    // The verdict: "ok", or "doubtful: " and the reason codes (issue 28 makes it a coded
    // qualitative evaluation in a TID 1500 report).
    content.push(text_item(
        "CONTAINS",
        ("quality", "Quality"),
        &record.doubt.summary(),
    ));
    for (task, d) in &record.extra_doubt {
        let v = d.summary();
        let code = format!("q_{}", task.as_str());
        content.push(text_item(
            "CONTAINS",
            (&code, &format!("Quality of {}", task.as_str())),
            &v,
        ));
    }
    content.push(text_item(
        "CONTAINS",
        ("frame", "Frame"),
        &format!("seq {} of run {}", record.seq, record.start_id),
    ));
    for (class, inst) in images {
        content.push(InMemDicomObject::from_element_iter([
            el(tags::RELATIONSHIP_TYPE, VR::CS, "CONTAINS"),
            el(tags::VALUE_TYPE, VR::CS, "IMAGE"),
            seq(
                tags::REFERENCED_SOP_SEQUENCE,
                vec![InMemDicomObject::from_element_iter([
                    el(tags::REFERENCED_SOP_CLASS_UID, VR::UI, *class),
                    el(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, *inst),
                ])],
            ),
        ]));
    }
    let evidence = InMemDicomObject::from_element_iter([
        el(tags::STUDY_INSTANCE_UID, VR::UI, exam.study_uid.as_str()),
        seq(
            tags::REFERENCED_SERIES_SEQUENCE,
            vec![InMemDicomObject::from_element_iter([
                el(
                    tags::SERIES_INSTANCE_UID,
                    VR::UI,
                    exam.image_series_uid.as_str(),
                ),
                seq(
                    tags::REFERENCED_SOP_SEQUENCE,
                    images
                        .iter()
                        .map(|(class, inst)| {
                            InMemDicomObject::from_element_iter([
                                el(tags::REFERENCED_SOP_CLASS_UID, VR::UI, *class),
                                el(tags::REFERENCED_SOP_INSTANCE_UID, VR::UI, *inst),
                            ])
                        })
                        .collect(),
                ),
            ])],
        ),
    ]);
    // Our private coding scheme, declared (PS3.3 C.12.1.1.5).
    o.put(seq(
        tags::CODING_SCHEME_IDENTIFICATION_SEQUENCE,
        vec![InMemDicomObject::from_element_iter([
            el(tags::CODING_SCHEME_DESIGNATOR, VR::SH, SCHEME),
            el(tags::CODING_SCHEME_NAME, VR::ST, "pocusd measurement keys"),
            el(
                tags::CODING_SCHEME_RESPONSIBLE_ORGANIZATION,
                VR::ST,
                "the pocusd project",
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
        el(tags::INSTANCE_NUMBER, VR::IS, instance.to_string().as_str()),
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
            vec![code("report", SCHEME, "pocusd measurement report")],
        ),
        el(tags::CONTINUITY_OF_CONTENT, VR::CS, "SEPARATE"),
        seq(tags::CONTENT_SEQUENCE, content),
    ] {
        o.put(e);
    }
    o
}

fn write(obj: InMemDicomObject, path: &Path) -> Result<(), DicomError> {
    let file = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let obj = obj
        .with_meta(
            FileMetaTableBuilder::new()
                .transfer_syntax(uids::EXPLICIT_VR_LITTLE_ENDIAN)
                .implementation_class_uid(IMPLEMENTATION_CLASS_UID)
                .implementation_version_name(IMPLEMENTATION_VERSION),
        )
        .map_err(|e| DicomError::Build {
            file,
            message: e.to_string(),
        })?;
    obj.write_to_file(path).map_err(|e| DicomError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// What a snapshot's DICOM files are made of.
#[derive(Debug, Clone, Copy)]
pub struct SnapshotInput<'a> {
    pub frame: &'a GrayImage,
    pub overlay: &'a RgbImage,
    pub record: &'a Measurement,
}

/// Writes `image.dcm`, `overlay.dcm` and `sr.dcm` into `dir` as snapshot number `n` (from 1) of
/// `exam` (see [`Exam::next_snapshot`]). Returns the paths.
pub fn write_snapshot(
    dir: &Path,
    exam: &Exam,
    n: u32,
    s: SnapshotInput<'_>,
) -> Result<Vec<PathBuf>, DicomError> {
    for (w, h) in [
        (s.frame.width(), s.frame.height()),
        (s.overlay.width, s.overlay.height),
    ] {
        if w == 0 || h == 0 || w > u16::MAX as usize || h > u16::MAX as usize {
            return Err(DicomError::BadValue {
                field: "image size",
                value: format!("{w}x{h}"),
                reason: "DICOM images have 1 to 65535 rows and columns".into(),
            });
        }
    }
    if s.overlay.data.len() != s.overlay.width * s.overlay.height * 3 {
        return Err(DicomError::BadValue {
            field: "overlay",
            value: format!("{} bytes", s.overlay.data.len()),
            reason: "not width x height x 3".into(),
        });
    }
    let (image, image_uid) = us_image(
        exam,
        2 * n - 1,
        1,
        s.frame.width(),
        s.frame.height(),
        1,
        s.frame.as_slice(),
        s.record,
        false,
    );
    let (overlay, overlay_uid) = us_image(
        exam,
        2 * n,
        1,
        s.overlay.width,
        s.overlay.height,
        3,
        &s.overlay.data,
        s.record,
        true,
    );
    let us = uids::ULTRASOUND_IMAGE_STORAGE;
    let sr = report(exam, n, s.record, &[(us, &image_uid), (us, &overlay_uid)]);
    let mut out = Vec::new();
    for (obj, name) in [image, overlay, sr].into_iter().zip(FILES) {
        let p = dir.join(name);
        write(obj, &p)?;
        out.push(p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uids_are_uuid_derived_and_distinct() {
        let (a, b) = (new_uid(), new_uid());
        assert_ne!(a, b);
        for u in [&a, &b] {
            assert!(u.starts_with("2.25."), "{u}");
            assert!(u.len() <= 64);
            let digits = &u[5..];
            assert!(digits.bytes().all(|c| c.is_ascii_digit()));
            assert!(!digits.starts_with('0'), "no leading zero: {u}");
        }
    }

    #[test]
    fn exam_values_are_checked() {
        assert!(Exam::new("123", "DOE^JANE", "A1", 0).is_ok());
        assert!(Exam::new("1\\2", "", "", 0).is_err());
        assert!(Exam::new("", "", "12345678901234567", 0).is_err());
        let e = Exam::new("", "", "", 0).unwrap();
        assert_eq!(e.patient_id, None);
    }

    #[test]
    fn codes_and_decimals_fit_their_vrs() {
        assert_eq!(short_code("thickness_mm"), "thickness_mm");
        let c = short_code("fascicle_length_spread_mm");
        assert_eq!(c.len(), 16);
        assert_ne!(c, short_code("fascicle_length_spread_px"));
        assert!(ds(12345.678_901_234).len() <= 16);
        assert_eq!(ds(1.5), "1.500000");
        assert_eq!(ucum("area_mm2"), Some(("mm2", "square millimeter")));
        assert_eq!(ucum("thickness_px"), None);
    }
}
