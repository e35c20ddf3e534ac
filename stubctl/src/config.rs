//! The guest's stored configuration (libxl's `libxl-json` userdata, what `xl list -l`
//! and `xl save` read): the CD-ROM's medium is changed there too, under libxl's
//! userdata lock, as libxl 4.20's cd-insert does, so the saved config names the medium
//! the guest has.

use serde_json::Value;

/// Why the stored configuration was not changed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("the stored configuration is not JSON: {0}")]
    NotJson(String),
    #[error("the stored configuration has no disk {0}")]
    NoDisk(String),
}

/// `text` (libxl's JSON, maybe NUL-terminated as libxl stores it) with disk `vdev`'s
/// medium set to `medium` (None: an empty drive), in the same form (trailing NUL kept).
pub fn with_medium(text: &[u8], vdev: &str, medium: Option<&str>) -> Result<Vec<u8>, ConfigError> {
    let nul_terminated = text.last() == Some(&0);
    let json = text.strip_suffix(&[0]).unwrap_or(text);
    let mut config: Value = serde_json::from_slice(json).map_err(|e| ConfigError::NotJson(e.to_string()))?;
    let disk = config
        .get_mut("disks")
        .and_then(Value::as_array_mut)
        .and_then(|disks| disks.iter_mut().find(|d| d["vdev"].as_str() == Some(vdev)))
        .and_then(Value::as_object_mut)
        .ok_or_else(|| ConfigError::NoDisk(vdev.to_string()))?;
    match medium {
        Some(path) => {
            disk.insert("pdev_path".to_string(), Value::String(path.to_string()));
            disk.insert("format".to_string(), Value::String("raw".to_string()));
        }
        None => {
            disk.remove("pdev_path");
            disk.insert("format".to_string(), Value::String("empty".to_string()));
        }
    }
    let mut out = serde_json::to_vec_pretty(&config).map_err(|e| ConfigError::NotJson(e.to_string()))?;
    out.push(b'\n');
    if nul_terminated {
        out.push(0);
    }
    Ok(out)
}

/// Disk `vdev`'s medium in stored configuration `text`, for reports.
pub fn medium(text: &[u8], vdev: &str) -> Option<String> {
    let json = text.strip_suffix(&[0]).unwrap_or(text);
    let config: Value = serde_json::from_slice(json).ok()?;
    let disk = config["disks"].as_array()?.iter().find(|d| d["vdev"].as_str() == Some(vdev))?;
    disk["pdev_path"].as_str().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORED: &[u8] = b"{\n    \"c_info\": {\"type\": \"hvm\", \"name\": \"g\"},\n    \"disks\": [\n        {\"pdev_path\": \"/tmp/a.iso\", \"vdev\": \"hdc\", \"backend\": \"qdisk\", \"format\": \"raw\", \"removable\": 1, \"is_cdrom\": 1},\n        {\"pdev_path\": \"/tmp/hda.img\", \"vdev\": \"hda\", \"format\": \"raw\"}\n    ]\n}\n\0";

    #[test]
    fn changes_only_the_cdroms_medium() {
        let changed = with_medium(STORED, "hdc", Some("/tmp/b.iso")).unwrap();
        assert_eq!(changed.last(), Some(&0));
        assert_eq!(medium(&changed, "hdc").as_deref(), Some("/tmp/b.iso"));
        assert_eq!(medium(&changed, "hda").as_deref(), Some("/tmp/hda.img"));
        let ejected = with_medium(&changed, "hdc", None).unwrap();
        assert_eq!(medium(&ejected, "hdc"), None);
        let value: Value = serde_json::from_slice(ejected.strip_suffix(&[0]).unwrap()).unwrap();
        assert_eq!(value["disks"][0]["format"], "empty");
        assert_eq!(value["disks"][0]["is_cdrom"], 1);
        assert_eq!(value["c_info"]["name"], "g");
    }

    #[test]
    fn refuses_what_it_cannot_change() {
        assert_eq!(with_medium(STORED, "hdd", None), Err(ConfigError::NoDisk("hdd".into())));
        assert!(matches!(with_medium(b"{", "hdc", None), Err(ConfigError::NotJson(_))));
        assert!(matches!(with_medium(b"", "hdc", None), Err(ConfigError::NotJson(_))));
        assert_eq!(with_medium(b"{\"disks\":3}", "hdc", None), Err(ConfigError::NoDisk("hdc".into())));
        // Without a NUL in, none out.
        let plain = with_medium(b"{\"disks\":[{\"vdev\":\"hdc\"}]}", "hdc", Some("/x")).unwrap();
        assert_ne!(plain.last(), Some(&0));
    }
}
