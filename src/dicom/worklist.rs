//! The Modality Worklist client and C-ECHO: [`query`] asks a worklist provider (C-FIND,
//! Modality Worklist Information Model - FIND, 1.2.840.10008.5.1.4.31) for today's scheduled
//! ultrasound steps of this station (Scheduled Station AE Title = our calling AE title) and
//! returns them as [`WorklistItem`]s; [`echo`] checks a peer (Verification, C-ECHO). Used by
//! `pocusd dicom worklist`, `pocusd dicom echo` and the daemon's worklist poller.
//! Must not depend on the daemon; does network I/O only.

use std::time::{Duration, Instant};

use dicom_core::value::DataSetSequence;
use dicom_core::{DataElement, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use dicom_transfer_syntax_registry::entries::{
    EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN,
};
use dicom_ul::association::client::ClientAssociationOptions;
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu, PresentationContextResultReason};
use serde::Serialize;

use super::net::{associate, command_set, OnAssociation};
use super::{el, empty};
use crate::config::DicomPeer;
use dicom_ul::association::client::CloseSocket;
use std::sync::Arc;

/// Verification SOP class (C-ECHO).
pub const VERIFICATION: &str = "1.2.840.10008.1.1";
/// Modality Worklist Information Model - FIND.
pub const WORKLIST_FIND: &str = "1.2.840.10008.5.1.4.31";

/// What goes wrong talking to a peer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NetError {
    #[error("cannot reach {peer} ({message}); is it running, and are its AE title, host and port right?")]
    Connect { peer: String, message: String },
    #[error("{peer} does not accept {service} (its SOP class {sop_class} was refused)")]
    Rejected {
        peer: String,
        service: &'static str,
        sop_class: &'static str,
    },
    #[error("{peer}: {service} failed with status 0x{status:04X}")]
    Status {
        peer: String,
        service: &'static str,
        status: u16,
    },
    #[error("{peer}: {message}")]
    Protocol { peer: String, message: String },
}

/// One scheduled procedure step of the worklist. The JSON keys (`pocusd dicom worklist --json`,
/// `GET /api/worklist`) are the DICOM attribute keywords.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct WorklistItem {
    #[serde(rename = "PatientID")]
    pub patient_id: String,
    pub patient_name: String,
    pub patient_birth_date: String,
    pub patient_sex: String,
    pub accession_number: String,
    #[serde(rename = "StudyInstanceUID")]
    pub study_instance_uid: String,
    #[serde(rename = "RequestedProcedureID")]
    pub requested_procedure_id: String,
    pub requested_procedure_description: String,
    #[serde(rename = "ScheduledProcedureStepID")]
    pub scheduled_procedure_step_id: String,
    pub scheduled_procedure_step_description: String,
    pub scheduled_procedure_step_start_date: String,
    pub scheduled_procedure_step_start_time: String,
    pub modality: String,
    #[serde(rename = "ScheduledStationAETitle")]
    pub scheduled_station_ae_title: String,
}

fn text(o: &InMemDicomObject, tag: Tag) -> String {
    o.get(tag)
        .and_then(|e| e.to_str().ok())
        .map(|s| s.trim_end_matches(['\0', ' ']).trim().to_string())
        .unwrap_or_default()
}

/// The C-FIND identifier: the return keys, and the matching keys of a scheduled step (modality
/// US, this station, `date` as YYYYMMDD).
fn identifier(station_aet: &str, date: &str) -> InMemDicomObject {
    let step = InMemDicomObject::from_element_iter([
        el(tags::MODALITY, VR::CS, "US"),
        el(tags::SCHEDULED_STATION_AE_TITLE, VR::AE, station_aet),
        el(tags::SCHEDULED_PROCEDURE_STEP_START_DATE, VR::DA, date),
        empty(tags::SCHEDULED_PROCEDURE_STEP_START_TIME, VR::TM),
        empty(tags::SCHEDULED_PROCEDURE_STEP_ID, VR::SH),
        empty(tags::SCHEDULED_PROCEDURE_STEP_DESCRIPTION, VR::LO),
    ]);
    InMemDicomObject::from_element_iter([
        empty(tags::SPECIFIC_CHARACTER_SET, VR::CS),
        empty(tags::ACCESSION_NUMBER, VR::SH),
        empty(tags::PATIENT_NAME, VR::PN),
        empty(tags::PATIENT_ID, VR::LO),
        empty(tags::PATIENT_BIRTH_DATE, VR::DA),
        empty(tags::PATIENT_SEX, VR::CS),
        empty(tags::STUDY_INSTANCE_UID, VR::UI),
        empty(tags::REQUESTED_PROCEDURE_ID, VR::SH),
        empty(tags::REQUESTED_PROCEDURE_DESCRIPTION, VR::LO),
        DataElement::new(
            tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(vec![step]),
        ),
    ])
}

fn item_of(o: &InMemDicomObject) -> WorklistItem {
    let step = o
        .get(tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE)
        .and_then(|e| e.items())
        .and_then(|items| items.first().cloned())
        .unwrap_or_else(InMemDicomObject::new_empty);
    WorklistItem {
        patient_id: text(o, tags::PATIENT_ID),
        patient_name: text(o, tags::PATIENT_NAME),
        patient_birth_date: text(o, tags::PATIENT_BIRTH_DATE),
        patient_sex: text(o, tags::PATIENT_SEX),
        accession_number: text(o, tags::ACCESSION_NUMBER),
        study_instance_uid: text(o, tags::STUDY_INSTANCE_UID),
        requested_procedure_id: text(o, tags::REQUESTED_PROCEDURE_ID),
        requested_procedure_description: text(o, tags::REQUESTED_PROCEDURE_DESCRIPTION),
        scheduled_procedure_step_id: text(&step, tags::SCHEDULED_PROCEDURE_STEP_ID),
        scheduled_procedure_step_description: text(
            &step,
            tags::SCHEDULED_PROCEDURE_STEP_DESCRIPTION,
        ),
        scheduled_procedure_step_start_date: text(&step, tags::SCHEDULED_PROCEDURE_STEP_START_DATE),
        scheduled_procedure_step_start_time: text(&step, tags::SCHEDULED_PROCEDURE_STEP_START_TIME),
        modality: text(&step, tags::MODALITY),
        scheduled_station_ae_title: text(&step, tags::SCHEDULED_STATION_AE_TITLE),
    }
}

/// What the association functions below need of a stream (plain TCP or TLS).
trait Stream: CloseSocket + std::io::Read + std::io::Write {}
impl<S: CloseSocket + std::io::Read + std::io::Write> Stream for S {}

type Assoc<S> = dicom_ul::ClientAssociation<S>;

/// The association options proposing `sop_class`.
fn options<'a>(
    peer: &'a DicomPeer,
    calling_aet: &'a str,
    sop_class: &'static str,
    timeout: Duration,
) -> ClientAssociationOptions<'a> {
    ClientAssociationOptions::new()
        .calling_ae_title(calling_aet)
        .called_ae_title(peer.aet.as_str())
        .read_timeout(timeout)
        .write_timeout(timeout)
        .connection_timeout(timeout)
        .with_presentation_context(
            sop_class,
            vec![
                EXPLICIT_VR_LITTLE_ENDIAN.uid(),
                IMPLICIT_VR_LITTLE_ENDIAN.uid(),
            ],
        )
}

/// The accepted presentation context's id and whether it is explicit VR.
fn context<S: Stream>(
    assoc: &Assoc<S>,
    who: &str,
    service: &'static str,
    sop_class: &'static str,
) -> Result<(u8, bool), NetError> {
    let pc = assoc
        .presentation_contexts()
        .iter()
        .find(|pc| pc.reason == PresentationContextResultReason::Acceptance)
        .cloned()
        .ok_or_else(|| NetError::Rejected {
            peer: who.to_string(),
            service,
            sop_class,
        })?;
    let explicit = pc.transfer_syntax.trim_end_matches('\0') != IMPLICIT_VR_LITTLE_ENDIAN.uid();
    Ok((pc.id, explicit))
}

/// Reads one message: its command set, and its data set when the command says one follows.
fn receive<S: Stream>(
    assoc: &mut Assoc<S>,
    explicit: bool,
) -> Result<(InMemDicomObject, Option<InMemDicomObject>), String> {
    let (mut command, mut data) = (Vec::new(), Vec::new());
    let mut command_done = false;
    let mut cmd_obj: Option<InMemDicomObject> = None;
    loop {
        match assoc.receive().map_err(|e| format!("no answer: {e}"))? {
            Pdu::PData { data: values } => {
                for v in values {
                    match v.value_type {
                        PDataValueType::Command => {
                            command.extend_from_slice(&v.data);
                            command_done |= v.is_last;
                        }
                        PDataValueType::Data => {
                            data.extend_from_slice(&v.data);
                            if v.is_last {
                                let ts = if explicit {
                                    EXPLICIT_VR_LITTLE_ENDIAN.erased()
                                } else {
                                    IMPLICIT_VR_LITTLE_ENDIAN.erased()
                                };
                                let d = InMemDicomObject::read_dataset_with_ts(&data[..], &ts)
                                    .map_err(|e| format!("unreadable answer: {e}"))?;
                                return Ok((
                                    cmd_obj.ok_or("a data set came before its command")?,
                                    Some(d),
                                ));
                            }
                        }
                    }
                }
                if command_done && cmd_obj.is_none() {
                    let c = InMemDicomObject::read_dataset_with_ts(
                        &command[..],
                        &IMPLICIT_VR_LITTLE_ENDIAN.erased(),
                    )
                    .map_err(|e| format!("unreadable command: {e}"))?;
                    // Command Data Set Type 0x0101: no data set follows.
                    let none = c
                        .get(tags::COMMAND_DATA_SET_TYPE)
                        .and_then(|e| e.to_int::<u16>().ok())
                        == Some(0x0101);
                    if none {
                        return Ok((c, None));
                    }
                    cmd_obj = Some(c);
                }
            }
            Pdu::AbortRQ { source } => return Err(format!("the peer aborted ({source:?})")),
            other => return Err(format!("unexpected {other:?}")),
        }
    }
}

fn status_of(c: &InMemDicomObject) -> Option<u16> {
    c.get(tags::STATUS).and_then(|e| e.to_int::<u16>().ok())
}

/// C-ECHO: whether `peer` answers (over TLS with `tls`); returns the round trip.
pub fn echo(
    peer: &DicomPeer,
    calling_aet: &str,
    timeout: Duration,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Duration, NetError> {
    let t = Instant::now();
    let who = peer.to_string();
    struct Echo<'a>(&'a str);
    impl OnAssociation for Echo<'_> {
        type Out = Result<(), NetError>;
        fn run<S: CloseSocket + std::io::Read + std::io::Write>(self, a: Assoc<S>) -> Self::Out {
            echo_on(a, self.0)
        }
    }
    let options = options(peer, calling_aet, VERIFICATION, timeout);
    associate(options, peer, tls, Echo(&who)).map_err(|message| NetError::Connect {
        peer: who.clone(),
        message,
    })??;
    Ok(t.elapsed())
}

fn echo_on<S: Stream>(mut assoc: Assoc<S>, who: &str) -> Result<(), NetError> {
    let proto = |message: String| NetError::Protocol {
        peer: who.to_string(),
        message,
    };
    let (pc, explicit) = context(&assoc, who, "C-ECHO", VERIFICATION)?;
    let cmd = command_set(vec![
        el(tags::AFFECTED_SOP_CLASS_UID, VR::UI, VERIFICATION),
        el(tags::COMMAND_FIELD, VR::US, 0x0030u16),
        el(tags::MESSAGE_ID, VR::US, 1u16),
        el(tags::COMMAND_DATA_SET_TYPE, VR::US, 0x0101u16),
    ])
    .map_err(&proto)?;
    send_command(&mut assoc, pc, cmd).map_err(&proto)?;
    let (c, _) = receive(&mut assoc, explicit).map_err(&proto)?;
    let _ = assoc.release();
    match status_of(&c) {
        Some(0) => Ok(()),
        Some(status) => Err(NetError::Status {
            peer: who.to_string(),
            service: "C-ECHO",
            status,
        }),
        None => Err(proto("the C-ECHO response has no status".into())),
    }
}

fn send_command<S: Stream>(assoc: &mut Assoc<S>, pc: u8, cmd: Vec<u8>) -> Result<(), String> {
    assoc
        .send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: pc,
                value_type: PDataValueType::Command,
                is_last: true,
                data: cmd,
            }],
        })
        .map_err(|e| format!("sending the request failed: {e}"))
}

/// C-FIND on the Modality Worklist: today's (`date`, YYYYMMDD) scheduled US steps of station
/// `station_aet`, in the order the provider sent them.
pub fn query(
    peer: &DicomPeer,
    calling_aet: &str,
    station_aet: &str,
    date: &str,
    timeout: Duration,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Vec<WorklistItem>, NetError> {
    let who = peer.to_string();
    let options = options(peer, calling_aet, WORKLIST_FIND, timeout);
    let find = Find {
        who: &who,
        calling_aet,
        station_aet,
        date,
    };
    associate(options, peer, tls, find).map_err(|message| NetError::Connect {
        peer: who.clone(),
        message,
    })?
}

/// A worklist query's parameters.
struct Find<'a> {
    who: &'a str,
    calling_aet: &'a str,
    station_aet: &'a str,
    date: &'a str,
}

impl OnAssociation for Find<'_> {
    type Out = Result<Vec<WorklistItem>, NetError>;
    fn run<S: CloseSocket + std::io::Read + std::io::Write>(self, a: Assoc<S>) -> Self::Out {
        query_on(a, &self)
    }
}

fn query_on<S: Stream>(mut assoc: Assoc<S>, q: &Find<'_>) -> Result<Vec<WorklistItem>, NetError> {
    let (who, calling_aet, station_aet, date) = (q.who, q.calling_aet, q.station_aet, q.date);
    let proto = |message: String| NetError::Protocol {
        peer: who.to_string(),
        message,
    };
    let (pc, explicit) = context(&assoc, who, "Modality Worklist C-FIND", WORKLIST_FIND)?;
    let cmd = command_set(vec![
        el(tags::AFFECTED_SOP_CLASS_UID, VR::UI, WORKLIST_FIND),
        el(tags::COMMAND_FIELD, VR::US, 0x0020u16),
        el(tags::MESSAGE_ID, VR::US, 1u16),
        el(tags::PRIORITY, VR::US, 0u16),
        el(tags::COMMAND_DATA_SET_TYPE, VR::US, 0x0000u16),
    ])
    .map_err(&proto)?;
    let ts = if explicit {
        EXPLICIT_VR_LITTLE_ENDIAN.erased()
    } else {
        IMPLICIT_VR_LITTLE_ENDIAN.erased()
    };
    let mut data = Vec::new();
    identifier(station_aet, date)
        .write_dataset_with_ts(&mut data, &ts)
        .map_err(|e| proto(format!("cannot encode the query: {e}")))?;
    send_command(&mut assoc, pc, cmd).map_err(&proto)?;
    {
        let mut w = assoc.send_pdata(pc);
        std::io::Write::write_all(&mut w, &data)
            .map_err(|e| proto(format!("sending the query failed: {e}")))?;
        w.finish()
            .map_err(|e| proto(format!("sending the query failed: {e}")))?;
    }
    let mut items = Vec::new();
    loop {
        let (c, d) = receive(&mut assoc, explicit).map_err(|e| {
            proto(format!(
                "{e}; a provider that aborts may refuse queries from AE title {calling_aet}: register this cart's AE title there"
            ))
        })?;
        match status_of(&c) {
            // Pending: a match follows (or came with it).
            Some(0xFF00) | Some(0xFF01) => {
                if let Some(d) = d {
                    items.push(item_of(&d));
                }
            }
            Some(0) => break,
            Some(status) => {
                let _ = assoc.abort();
                return Err(NetError::Status {
                    peer: who.to_string(),
                    service: "Modality Worklist C-FIND",
                    status,
                });
            }
            None => return Err(proto("a C-FIND response has no status".into())),
        }
    }
    let _ = assoc.release();
    Ok(items)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_read_their_keys_from_a_match() {
        let step = InMemDicomObject::from_element_iter([
            el(tags::MODALITY, VR::CS, "US"),
            el(tags::SCHEDULED_PROCEDURE_STEP_ID, VR::SH, "SPS1"),
            el(tags::SCHEDULED_STATION_AE_TITLE, VR::AE, "POCUSD"),
        ]);
        let mut o = identifier("POCUSD", "20261203");
        o.put(el(tags::PATIENT_NAME, VR::PN, "DOE^JANE "));
        o.put(el(tags::ACCESSION_NUMBER, VR::SH, "ACC1"));
        o.put(DataElement::new(
            tags::SCHEDULED_PROCEDURE_STEP_SEQUENCE,
            VR::SQ,
            DataSetSequence::from(vec![step]),
        ));
        let item = item_of(&o);
        assert_eq!(item.patient_name, "DOE^JANE");
        assert_eq!(item.accession_number, "ACC1");
        assert_eq!(item.scheduled_procedure_step_id, "SPS1");
        assert_eq!(item.modality, "US");
        let json = serde_json::to_value(&item).unwrap();
        assert_eq!(json["AccessionNumber"], "ACC1");
        assert_eq!(json["ScheduledProcedureStepID"], "SPS1");
        assert_eq!(json["ScheduledStationAETitle"], "POCUSD");
        assert_eq!(json["PatientID"], "");
    }
}
