//! Checks that bytes a [`Session`](crate::Session) wrote are a well-formed QMP stream,
//! for fuzz targets and tests that feed a session arbitrary input.

use alloc::format;
use alloc::string::String;

/// What a well-formed QMP output stream held after its greeting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StreamSummary {
    pub returns: usize,
    pub errors: usize,
    pub events: usize,
}

/// Checks that `output` is a QMP stream: `\r\n`-terminated JSON objects, the greeting
/// first, then replies (`return` or `error` with a known class and a description) and
/// events (`event` with a timestamp), and counts them. `Err` says what is wrong.
pub fn check_output(output: &[u8]) -> Result<StreamSummary, String> {
    let mut summary = StreamSummary::default();
    let mut rest = output;
    let mut first = true;
    while !rest.is_empty() {
        let end = rest
            .windows(2)
            .position(|pair| pair == b"\r\n")
            .ok_or_else(|| String::from("output does not end with \\r\\n"))?;
        let line = &rest[..end];
        rest = &rest[end + 2..];
        let value: serde_json::Value =
            serde_json::from_slice(line).map_err(|error| format!("output line is not JSON: {error}"))?;
        let object = value.as_object().ok_or_else(|| String::from("output line is not an object"))?;
        if first {
            if !object.contains_key("QMP") {
                return Err(String::from("the first line is not the greeting"));
            }
            first = false;
            continue;
        }
        if let Some(error) = object.get("error") {
            let class = error.get("class").and_then(|class| class.as_str());
            if !matches!(class, Some("GenericError" | "CommandNotFound" | "DeviceNotFound")) {
                return Err(format!("unexpected error class in {value}"));
            }
            if error.get("desc").and_then(|desc| desc.as_str()).is_none() {
                return Err(format!("error without desc: {value}"));
            }
            summary.errors += 1;
        } else if object.contains_key("return") {
            summary.returns += 1;
        } else if object.contains_key("event") {
            if object.get("timestamp").and_then(|stamp| stamp.get("seconds")).is_none() {
                return Err(format!("event without timestamp: {value}"));
            }
            summary.events += 1;
        } else {
            return Err(format!("unexpected output line: {value}"));
        }
    }
    if first {
        return Err(String::from("no greeting"));
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_a_well_formed_stream_and_names_what_is_wrong() {
        let stream = concat!(
            "{\"QMP\":{}}\r\n",
            "{\"return\":{}}\r\n",
            "{\"event\":\"STOP\",\"timestamp\":{\"seconds\":1,\"microseconds\":2}}\r\n",
            "{\"error\":{\"class\":\"DeviceNotFound\",\"desc\":\"x\"}}\r\n",
        );
        assert_eq!(check_output(stream.as_bytes()), Ok(StreamSummary { returns: 1, errors: 1, events: 1 }));
        assert_eq!(check_output(b""), Err(String::from("no greeting")));
        assert_eq!(check_output(b"{\"return\":{}}\r\n"), Err(String::from("the first line is not the greeting")));
        assert!(check_output(b"{\"QMP\":{}}\r\n{\"return\":{}}").is_err());
        assert!(check_output(b"{\"QMP\":{}}\r\n{\"error\":{\"class\":\"Bogus\",\"desc\":\"x\"}}\r\n").is_err());
        assert!(check_output(b"{\"QMP\":{}}\r\n{\"event\":\"STOP\"}\r\n").is_err());
    }
}
