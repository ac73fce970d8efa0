//! Writes checkpoints atomically: model records (`epoch-NNNN.mpk`) and the PyTorch-named backbone export.

use super::resnet::{ResNet, ResNetConfig};
use super::{TrainError, TrainEvent};
use burn::module::Module;
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Recorder};
use burn::tensor::backend::Backend;
use burn_store::{BurnToPyTorchAdapter, ModuleSnapshot, SafetensorsStore};
use sha2::{Digest, Sha256};
use std::fs;
use std::io::Write;
use std::path::Path;

/// File name of the final backbone export.
pub const BACKBONE_FILE: &str = "backbone.safetensors";

/// Name of the checkpoint written after epoch `epoch` (1-based).
pub fn epoch_file(epoch: usize) -> String {
    format!("epoch-{epoch:04}.mpk")
}

/// Writes `bytes` to `dir/name` so that readers never see a partial file:
/// write a temporary file in the same folder, fsync it, rename it over the
/// final name, fsync the folder. Returns the `Checkpoint` event to send.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) -> Result<TrainEvent, TrainError> {
    let fail = |what: &str, path: &Path, e: std::io::Error| {
        TrainError::Checkpoint(format!("{what} {}: {e}", path.display()))
    };
    fs::create_dir_all(dir).map_err(|e| fail("cannot create", dir, e))?;
    let path = dir.join(name);
    let tmp = dir.join(format!(
        ".{name}.tmp-{}-{:x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let written = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(fail("cannot write", &tmp, e));
    }
    if let Err(e) = fs::rename(&tmp, &path) {
        let _ = fs::remove_file(&tmp);
        return Err(fail("cannot rename into", &path, e));
    }
    // Persist the rename itself; folders cannot be fsynced on every platform,
    // and the file is already complete, so a failure here is not fatal.
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(TrainEvent::Checkpoint {
        name: name.to_string(),
        path,
        bytes: bytes.len() as u64,
        sha256: hex::encode(Sha256::digest(bytes)),
    })
}

/// Serialises a whole module (backbone and heads) with Burn's named
/// MessagePack recorder at full precision; `Module::load_record` reads it back.
pub fn model_record_bytes<B: Backend, M: Module<B>>(model: &M) -> Result<Vec<u8>, TrainError> {
    NamedMpkBytesRecorder::<FullPrecisionSettings>::default()
        .record(model.clone().into_record(), ())
        .map_err(|e| TrainError::Checkpoint(format!("cannot serialise the model: {e}")))
}

/// Serialises the backbone as safetensors with PyTorch conventions
/// (`BurnToPyTorchAdapter`: BatchNorm `gamma`/`beta` become `weight`/`bias`,
/// Linear weights are transposed); tensor names are listed in `resnet.rs`.
/// The architecture is stored as JSON under the `pretext.backbone` metadata key.
pub fn backbone_safetensors_bytes<B: Backend>(
    backbone: &ResNet<B>,
    config: &ResNetConfig,
) -> Result<Vec<u8>, TrainError> {
    let arch = serde_json::to_string(config).map_err(|e| TrainError::Checkpoint(e.to_string()))?;
    let mut store = SafetensorsStore::from_bytes(None)
        .with_to_adapter(BurnToPyTorchAdapter)
        .metadata("pretext.backbone", arch);
    backbone
        .save_into(&mut store)
        .map_err(|e| TrainError::Checkpoint(format!("cannot export the backbone: {e}")))?;
    store
        .get_bytes()
        .map_err(|e| TrainError::Checkpoint(format!("cannot export the backbone: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackbonePreset;
    use burn::backend::Flex;

    #[test]
    fn atomic_write_replaces_and_hashes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("checkpoints");
        write_atomic(&dir, "a.bin", b"old").unwrap();
        let ev = write_atomic(&dir, "a.bin", b"abc").unwrap();
        let TrainEvent::Checkpoint {
            name,
            path,
            bytes,
            sha256,
        } = ev
        else {
            panic!("wrong event")
        };
        assert_eq!((name.as_str(), bytes), ("a.bin", 3));
        assert_eq!(fs::read(&path).unwrap(), b"abc");
        // sha256("abc"), FIPS 180-2 test vector.
        assert_eq!(
            sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        // Only the final file remains.
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1);
    }

    #[test]
    fn backbone_export_has_pytorch_names() {
        let device = Default::default();
        let cfg = ResNetConfig::preset(BackbonePreset::Small);
        let net = cfg.init::<Flex>(&device);
        let bytes = backbone_safetensors_bytes(&net, &cfg).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let names: Vec<String> = st.names().into_iter().map(String::from).collect();
        for expected in [
            "stem.conv.weight",
            "stem.bn.weight",
            "stem.bn.bias",
            "stem.bn.running_mean",
            "stem.bn.running_var",
            "layers.0.0.conv1.weight",
            "layers.0.0.bn2.running_var",
            "layers.1.0.shortcut.conv.weight",
            "layers.3.0.shortcut.bn.bias",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} missing from {names:?}"
            );
        }
        assert!(
            !names
                .iter()
                .any(|n| n.contains("gamma") || n.contains("beta")),
            "{names:?}"
        );
        let stem = st.tensor("stem.conv.weight").unwrap();
        assert_eq!(stem.shape(), &[16, 3, 3, 3]);
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let arch = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("pretext.backbone").cloned())
            .unwrap();
        assert!(arch.contains("[16,32,64,128]"), "{arch}");
    }
}
