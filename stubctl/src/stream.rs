//! The file `xl restore` reads: xl's save-file header carrying the guest's JSON
//! config, then a libxl migration stream v2 around libxc's stream (reference
//! dom0-helper.md §3.1-3.4; xl_saverestore.c, libxl_sr_stream_format.h).
//!
//! Layout: the 48-byte xl header (magic, byte order, mandatory flags JSON and
//! STREAMv2, optional data length), the config as a u32 length and the JSON with its
//! NUL; the libxl header (big-endian "LibxlFmt", version 2, options 0); records of an
//! 8-byte header (type, body length: little-endian) and a body padded with zeros to 8
//! bytes. LIBXC_CONTEXT has no body: libxc's own stream follows it unframed and ends
//! with libxc's END; then EMULATOR_CONTEXT (emulator id 2, qemu-xen, index 0, the
//! device model's state) and END.

/// xl's magic, 32 bytes, no terminator of its own.
pub const XL_MAGIC: &[u8; 32] = b"Xen saved domain, xl format\n \0 \r";
/// xl's byte-order mark (`SAVEFILE_BYTEORDER_VALUE`).
const XL_BYTEORDER: u32 = 0x0102_0304;
/// `XL_MANDATORY_FLAG_JSON | XL_MANDATORY_FLAG_STREAMv2`.
const XL_MANDATORY_FLAGS: u32 = (1 << 0) | (1 << 1);
/// "LibxlFmt", the libxl stream's ident.
const LIBXL_IDENT: u64 = 0x4c69_6278_6c46_6d74;
const LIBXL_VERSION: u32 = 2;
/// qemu-xen ("upstream"), the emulator id libxl writes for it.
const EMULATOR_QEMU_XEN: u32 = 2;

/// libxl stream record types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum RecordType {
    End = 0,
    LibxcContext = 1,
    EmulatorXenstoreData = 2,
    EmulatorContext = 3,
    CheckpointEnd = 4,
}

/// Why a stream part was not written.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    #[error("the config is {0} bytes, more than a u32 length says")]
    ConfigTooLong(usize),
    #[error("a record body of {0} bytes, more than a u32 length says")]
    RecordTooLong(usize),
}

/// xl's header and the config (`config_json` gets its NUL if it has none), as `xl
/// save` writes them.
pub fn xl_header(config_json: &[u8]) -> Result<Vec<u8>, StreamError> {
    let mut config = config_json.to_vec();
    if config.last() != Some(&0) {
        config.push(0);
    }
    let config_len = u32::try_from(config.len()).map_err(|_| StreamError::ConfigTooLong(config.len()))?;
    let optional_len = config_len.checked_add(4).ok_or(StreamError::ConfigTooLong(config.len()))?;
    let mut out = Vec::with_capacity(48 + 4 + config.len());
    out.extend_from_slice(XL_MAGIC);
    for field in [XL_BYTEORDER, XL_MANDATORY_FLAGS, 0, optional_len] {
        out.extend_from_slice(&field.to_le_bytes());
    }
    out.extend_from_slice(&config_len.to_le_bytes());
    out.extend_from_slice(&config);
    Ok(out)
}

/// The libxl stream's header.
pub fn libxl_header() -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&LIBXL_IDENT.to_be_bytes());
    out[8..12].copy_from_slice(&LIBXL_VERSION.to_be_bytes());
    out
}

/// One libxl record: header, body, zero padding to 8 bytes.
pub fn record(kind: RecordType, body: &[u8]) -> Result<Vec<u8>, StreamError> {
    let len = u32::try_from(body.len()).map_err(|_| StreamError::RecordTooLong(body.len()))?;
    let mut out = Vec::with_capacity(8 + body.len() + 7);
    out.extend_from_slice(&(kind as u32).to_le_bytes());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(body);
    out.resize(out.len().next_multiple_of(8), 0);
    Ok(out)
}

/// The EMULATOR_CONTEXT record of a qemu-xen device model's state `blob`.
pub fn emulator_context(blob: &[u8]) -> Result<Vec<u8>, StreamError> {
    let mut body = Vec::with_capacity(8 + blob.len());
    body.extend_from_slice(&EMULATOR_QEMU_XEN.to_le_bytes());
    body.extend_from_slice(&0u32.to_le_bytes());
    body.extend_from_slice(blob);
    record(RecordType::EmulatorContext, &body)
}

/// Everything before libxc's stream: xl header and config, libxl header, LIBXC_CONTEXT.
pub fn prologue(config_json: &[u8]) -> Result<Vec<u8>, StreamError> {
    let mut out = xl_header(config_json)?;
    out.extend_from_slice(&libxl_header());
    out.extend_from_slice(&record(RecordType::LibxcContext, &[])?);
    Ok(out)
}

/// Everything after libxc's stream: the device model's state and END.
pub fn epilogue(device_model_state: &[u8]) -> Result<Vec<u8>, StreamError> {
    let mut out = emulator_context(device_model_state)?;
    out.extend_from_slice(&record(RecordType::End, &[])?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xl_header_bytes() {
        let out = xl_header(b"{}").unwrap();
        let expected: Vec<u8> = [
            &b"Xen saved domain, xl format\n \0 \r"[..],
            &[0x04, 0x03, 0x02, 0x01], // byte order
            &[3, 0, 0, 0],             // JSON | STREAMv2
            &[0, 0, 0, 0],             // optional flags
            &[7, 0, 0, 0],             // optional data: u32 length + "{}\0"
            &[3, 0, 0, 0],
            b"{}\0",
        ]
        .concat();
        assert_eq!(out, expected);
        assert_eq!(xl_header(b"{}\0").unwrap(), expected);
        assert_eq!(&out[..32], hex(b"58656e20736176656420646f6d61696e2c20786c20666f726d61740a2000200d").as_slice());
    }

    fn hex(text: &[u8]) -> Vec<u8> {
        text.chunks(2).map(|pair| u8::from_str_radix(std::str::from_utf8(pair).unwrap(), 16).unwrap()).collect()
    }

    #[test]
    fn libxl_header_and_records() {
        assert_eq!(libxl_header(), *b"LibxlFmt\0\0\0\x02\0\0\0\0");
        assert_eq!(record(RecordType::LibxcContext, &[]).unwrap(), [1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(record(RecordType::End, &[]).unwrap(), [0; 8]);
        let padded = record(RecordType::EmulatorXenstoreData, b"abc").unwrap();
        assert_eq!(padded, [2, 0, 0, 0, 3, 0, 0, 0, b'a', b'b', b'c', 0, 0, 0, 0, 0]);
        let context = emulator_context(b"QEVM").unwrap();
        assert_eq!(context, [3, 0, 0, 0, 12, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, b'Q', b'E', b'V', b'M', 0, 0, 0, 0]);
        assert_eq!(epilogue(b"").unwrap().len(), 16 + 8);
    }

    /// A libxc stream with only what its verifier needs: image header, an x86 HVM
    /// domain header, END.
    fn minimal_libxc_stream() -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&u64::MAX.to_be_bytes());
        out.extend_from_slice(&0x5845_4E46u32.to_be_bytes()); // "XENF"
        out.extend_from_slice(&3u32.to_be_bytes());
        out.extend_from_slice(&[0; 8]); // options, reserved
        for field in [2u32, 12 /* page shift, reserved */, 4, 17] {
            out.extend_from_slice(&field.to_le_bytes());
        }
        out.extend_from_slice(&[0; 8]); // END
        out
    }

    /// Xen's own verifier (xen-utils' verify-stream-v2) accepts a file made of these
    /// parts around a libxc stream, as `xl restore` would read it.
    #[test]
    fn xens_verifier_accepts_the_file() {
        let verifier = "/usr/lib/xen-4.17/bin/verify-stream-v2";
        assert!(
            std::path::Path::new(verifier).exists(),
            "{verifier} is missing: install xen-utils-4.17 (cargo xtask test does)"
        );
        let config = br#"{"c_info":{"type":"hvm","name":"g"},"b_info":{"type":"hvm"}}"#;
        let mut file = prologue(config).unwrap();
        file.extend_from_slice(&minimal_libxc_stream());
        file.extend_from_slice(&epilogue(b"device model state").unwrap());
        let path = std::env::temp_dir().join(format!("stubctl-stream-{}.xl", std::process::id()));
        std::fs::write(&path, &file).unwrap();
        let out = std::process::Command::new(verifier)
            .env("PYTHONPATH", "/usr/lib/xen-4.17/lib/python")
            .args(["-f", "xl", "-v", "-i"])
            .arg(&path)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        std::fs::remove_file(&path).unwrap();
        assert!(out.status.success(), "{text}");
        for line in [
            "Processed xl header",
            "Libxl Record: Libxc context, length 0",
            "Domain Header: x86 HVM from Xen 4.17",
            "Libxl Record: Emulator context, length 26",
            "Index 0, type Qemu Upstream",
            "Libxl Record: End, length 0",
        ] {
            assert!(text.contains(line), "{line:?} not in {text}");
        }

        // And refuses a file whose padding is not zeros.
        let mut broken = file.clone();
        let at = broken.len() - 8 - 4; // inside EMULATOR_CONTEXT's padding
        broken[at] = 1;
        std::fs::write(&path, &broken).unwrap();
        let status = std::process::Command::new(verifier)
            .env("PYTHONPATH", "/usr/lib/xen-4.17/lib/python")
            .args(["-f", "xl", "-i"])
            .arg(&path)
            .output()
            .unwrap()
            .status;
        std::fs::remove_file(&path).unwrap();
        assert!(!status.success());
    }
}
