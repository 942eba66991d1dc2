//! The C-STORE client (SCU): sends DICOM files to a peer (`AET@HOST:PORT`) in one association,
//! proposing each file's SOP class with explicit and implicit VR little endian, and reads each
//! C-STORE response's status. Used by `pocusd dicom send` and by the spool.
//! Must not depend on the daemon; does network I/O only.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use dicom_core::{DataElement, PrimitiveValue, VR};
use dicom_dictionary_std::tags;
use dicom_object::{InMemDicomObject, OpenFileOptions};
use dicom_transfer_syntax_registry::entries::{
    EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN,
};
use dicom_ul::association::client::ClientAssociationOptions;
use dicom_ul::pdu::{PDataValue, PDataValueType, Pdu, PresentationContextResultReason};

use crate::config::{DicomPeer, DicomTls};

/// The rustls client configuration of `[dicom] tls`: the CA's certificates as the only roots,
/// and our client certificate when given. The error names the file.
pub fn tls_client_config(t: &DicomTls) -> Result<Arc<rustls::ClientConfig>, String> {
    use pki_types::pem::PemObject;
    use pki_types::{CertificateDer, PrivateKeyDer};
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()));
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&read(&t.ca)?) {
        let c = c.map_err(|e| format!("{} holds no PEM certificate: {e}", t.ca.display()))?;
        roots
            .add(c)
            .map_err(|e| format!("{}: {e}", t.ca.display()))?;
    }
    if roots.is_empty() {
        return Err(format!("{} holds no certificate", t.ca.display()));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots);
    let config = match &t.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(&read(cert)?)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("{}: {e}", cert.display()))?;
            let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
                .map_err(|e| format!("{}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("{} and {}: {e}", cert.display(), key.display()))?
        }
    };
    Ok(Arc::new(config))
}

/// An association to `peer`, plain or TLS, handed to a function generic over the stream.
pub(super) trait OnAssociation {
    type Out;
    fn run<S>(self, assoc: dicom_ul::ClientAssociation<S>) -> Self::Out
    where
        S: dicom_ul::association::client::CloseSocket + std::io::Read + std::io::Write;
}

/// Establishes `options` with `peer` (over TLS with `tls`) and runs `f` on it; a failure to
/// connect (or a refused certificate) is `Err(message)`.
pub(super) fn associate<F: OnAssociation>(
    options: ClientAssociationOptions<'_>,
    peer: &DicomPeer,
    tls: Option<&Arc<rustls::ClientConfig>>,
    f: F,
) -> Result<F::Out, String> {
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&peer.addr)
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| "the host name resolves to no address".to_string())?;
    match tls {
        None => Ok(f.run(options.establish(addr).map_err(|e| e.to_string())?)),
        Some(config) => {
            let host = peer
                .addr
                .rsplit_once(':')
                .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
                .unwrap_or(&peer.addr);
            let assoc = options
                .tls_config(config.clone())
                .server_name(host)
                .establish_tls(addr)
                .map_err(|e| {
                    format!("{e} over TLS; is its certificate signed by dicom.tls_ca and made out to {host}?")
                })?;
            Ok(f.run(assoc))
        }
    }
}

/// What goes wrong sending.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("cannot read {}: {message}", path.display())]
    Read { path: PathBuf, message: String },
    #[error("cannot reach {peer} ({message}); is the PACS running, and are its AE title and port right?")]
    Connect { peer: String, message: String },
    #[error("{peer} accepts no presentation context for {file} (SOP class {sop_class})")]
    Rejected {
        peer: String,
        file: String,
        sop_class: String,
    },
    #[error("{peer}: storing {file} failed with status 0x{status:04X}")]
    Status {
        peer: String,
        file: String,
        status: u16,
    },
    #[error("{peer}: {message}")]
    Protocol { peer: String, message: String },
}

impl SendError {
    /// Whether retrying later can help (the peer was unreachable or broke off), as opposed to a
    /// file it refuses or that cannot be read.
    pub fn transient(&self) -> bool {
        matches!(self, SendError::Connect { .. } | SendError::Protocol { .. })
    }
}

/// One file stored.
#[derive(Debug, Clone)]
pub struct Stored {
    pub path: PathBuf,
    pub sop_instance_uid: String,
    /// The C-STORE status (0 success, 0xB000.. warnings).
    pub status: u16,
}

struct Item {
    path: PathBuf,
    name: String,
    sop_class: String,
    sop_instance: String,
    dataset: InMemDicomObject,
    ts: String,
}

fn read_item(path: &Path) -> Result<Item, SendError> {
    let err = |message: String| SendError::Read {
        path: path.to_path_buf(),
        message,
    };
    let obj = OpenFileOptions::new()
        .open_file(path)
        .map_err(|e| err(e.to_string()))?;
    let meta = obj.meta();
    let sop_class = meta
        .media_storage_sop_class_uid()
        .trim_end_matches('\0')
        .to_string();
    let sop_instance = meta
        .media_storage_sop_instance_uid()
        .trim_end_matches('\0')
        .to_string();
    let ts = meta.transfer_syntax().trim_end_matches('\0').to_string();
    Ok(Item {
        path: path.to_path_buf(),
        name: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        sop_class,
        sop_instance,
        ts,
        dataset: obj.into_inner(),
    })
}

fn command(sop_class: &str, sop_instance: &str, message_id: u16) -> Result<Vec<u8>, String> {
    command_set(vec![
        DataElement::new(
            tags::AFFECTED_SOP_CLASS_UID,
            VR::UI,
            PrimitiveValue::from(sop_class),
        ),
        DataElement::new(tags::COMMAND_FIELD, VR::US, PrimitiveValue::from(0x0001u16)),
        DataElement::new(tags::MESSAGE_ID, VR::US, PrimitiveValue::from(message_id)),
        DataElement::new(tags::PRIORITY, VR::US, PrimitiveValue::from(0u16)),
        DataElement::new(
            tags::COMMAND_DATA_SET_TYPE,
            VR::US,
            PrimitiveValue::from(0u16),
        ),
        DataElement::new(
            tags::AFFECTED_SOP_INSTANCE_UID,
            VR::UI,
            PrimitiveValue::from(sop_instance),
        ),
    ])
}

/// A DIMSE command set (group 0000) with its group length, implicit VR little endian.
pub(super) fn command_set(elements: Vec<DataElement<InMemDicomObject>>) -> Result<Vec<u8>, String> {
    let mut cmd = InMemDicomObject::from_element_iter(elements);
    let mut body = Vec::new();
    cmd.write_dataset_with_ts(&mut body, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .map_err(|e| e.to_string())?;
    cmd.put(DataElement::new(
        tags::COMMAND_GROUP_LENGTH,
        VR::UL,
        PrimitiveValue::from(body.len() as u32),
    ));
    let mut out = Vec::new();
    cmd.write_dataset_with_ts(&mut out, &IMPLICIT_VR_LITTLE_ENDIAN.erased())
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Sends `files` to `peer` as `calling_aet` in one association; stops at the first failure.
pub fn send_files(
    peer: &DicomPeer,
    calling_aet: &str,
    files: &[PathBuf],
    timeout: Duration,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Result<Vec<Stored>, SendError> {
    let items = files
        .iter()
        .map(|p| read_item(p))
        .collect::<Result<Vec<_>, _>>()?;
    let who = peer.to_string();
    let mut classes: Vec<&str> = items.iter().map(|i| i.sop_class.as_str()).collect();
    classes.sort_unstable();
    classes.dedup();
    let mut options = ClientAssociationOptions::new()
        .calling_ae_title(calling_aet)
        .called_ae_title(peer.aet.as_str())
        .read_timeout(timeout)
        .write_timeout(timeout)
        .connection_timeout(timeout);
    for c in &classes {
        options = options.with_presentation_context(
            *c,
            vec![
                EXPLICIT_VR_LITTLE_ENDIAN.uid(),
                IMPLICIT_VR_LITTLE_ENDIAN.uid(),
            ],
        );
    }
    struct Send<'a> {
        items: &'a [Item],
        who: &'a str,
    }
    impl OnAssociation for Send<'_> {
        type Out = Result<Vec<Stored>, SendError>;
        fn run<S>(self, assoc: dicom_ul::ClientAssociation<S>) -> Self::Out
        where
            S: dicom_ul::association::client::CloseSocket + std::io::Read + std::io::Write,
        {
            send_on(assoc, self.items, self.who)
        }
    }
    associate(
        options,
        peer,
        tls,
        Send {
            items: &items,
            who: &who,
        },
    )
    .map_err(|message| SendError::Connect {
        peer: who.clone(),
        message,
    })?
}

/// Sends `items` on an open association, stopping at the first failure.
fn send_on<S>(
    mut assoc: dicom_ul::ClientAssociation<S>,
    items: &[Item],
    who: &str,
) -> Result<Vec<Stored>, SendError>
where
    S: dicom_ul::association::client::CloseSocket + std::io::Read + std::io::Write,
{
    let who = who.to_string();
    let proto = |message: String| SendError::Protocol {
        peer: who.clone(),
        message,
    };
    let mut stored = Vec::new();
    for (n, item) in items.iter().enumerate() {
        let pc = assoc
            .presentation_contexts()
            .iter()
            .find(|pc| {
                pc.reason == PresentationContextResultReason::Acceptance
                    && pc.abstract_syntax.trim_end_matches('\0') == item.sop_class
            })
            .cloned()
            .ok_or_else(|| SendError::Rejected {
                peer: who.clone(),
                file: item.name.clone(),
                sop_class: item.sop_class.clone(),
            })?;
        let ts_uid = pc.transfer_syntax.trim_end_matches('\0');
        let ts = if ts_uid == IMPLICIT_VR_LITTLE_ENDIAN.uid() {
            IMPLICIT_VR_LITTLE_ENDIAN.erased()
        } else {
            EXPLICIT_VR_LITTLE_ENDIAN.erased()
        };
        if item.ts != EXPLICIT_VR_LITTLE_ENDIAN.uid() && item.ts != IMPLICIT_VR_LITTLE_ENDIAN.uid()
        {
            return Err(SendError::Read {
                path: item.path.clone(),
                message: format!(
                    "transfer syntax {} is not sent by this client (only uncompressed little endian)",
                    item.ts
                ),
            });
        }
        let message_id = (n + 1) as u16;
        let cmd = command(&item.sop_class, &item.sop_instance, message_id).map_err(&proto)?;
        let mut data = Vec::new();
        item.dataset
            .write_dataset_with_ts(&mut data, &ts)
            .map_err(|e| proto(format!("cannot encode {}: {e}", item.name)))?;
        assoc
            .send(&Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: pc.id,
                    value_type: PDataValueType::Command,
                    is_last: true,
                    data: cmd,
                }],
            })
            .map_err(|e| proto(format!("sending the C-STORE request failed: {e}")))?;
        {
            let mut w = assoc.send_pdata(pc.id);
            std::io::Write::write_all(&mut w, &data)
                .map_err(|e| proto(format!("sending {} failed: {e}", item.name)))?;
            w.finish()
                .map_err(|e| proto(format!("sending {} failed: {e}", item.name)))?;
        }
        let status = read_status(&mut assoc).map_err(&proto)?;
        // 0x0000 success; 0x0001 and 0xBxxx warnings (stored).
        if status != 0 && status != 0x0001 && (status & 0xF000) != 0xB000 {
            let _ = assoc.abort();
            return Err(SendError::Status {
                peer: who.clone(),
                file: item.name.clone(),
                status,
            });
        }
        stored.push(Stored {
            path: item.path.clone(),
            sop_instance_uid: item.sop_instance.clone(),
            status,
        });
    }
    let _ = assoc.release();
    Ok(stored)
}

/// Reads PDUs until a whole command arrives; returns its Status (0000,0900).
fn read_status<S>(assoc: &mut dicom_ul::ClientAssociation<S>) -> Result<u16, String>
where
    S: dicom_ul::association::client::CloseSocket + std::io::Read + std::io::Write,
{
    let mut command = Vec::new();
    loop {
        match assoc
            .receive()
            .map_err(|e| format!("no C-STORE response: {e}"))?
        {
            Pdu::PData { data } => {
                let mut done = false;
                for v in data {
                    if v.value_type == PDataValueType::Command {
                        command.extend_from_slice(&v.data);
                        done |= v.is_last;
                    }
                }
                if done {
                    break;
                }
            }
            Pdu::AbortRQ { source } => return Err(format!("the peer aborted ({source:?})")),
            other => {
                return Err(format!(
                    "unexpected {other:?} instead of a C-STORE response"
                ))
            }
        }
    }
    let obj =
        InMemDicomObject::read_dataset_with_ts(&command[..], &IMPLICIT_VR_LITTLE_ENDIAN.erased())
            .map_err(|e| format!("unreadable C-STORE response: {e}"))?;
    obj.get(tags::STATUS)
        .and_then(|e| e.value().to_int::<u16>().ok())
        .ok_or_else(|| "the C-STORE response has no status".to_string())
}
