//! Sealing a secret: who can open which version.
//!
//! - A version's entries are encrypted once with XChaCha20-Poly1305 under a 256-bit data key
//!   drawn for that version alone, with the object's key and the version id as associated
//!   data (a ciphertext moved to another secret or version fails to open).
//! - The data key is sealed to each recipient node, ECIES-style: a one-time X25519 key pair,
//!   Diffie-Hellman with the node's public key, HKDF-SHA256 over the shared secret and both
//!   public keys, and ChaCha20-Poly1305 around the data key with the node's id, the object and
//!   the version as associated data. Only the holder of that node's private key opens it.
//! - Randomness (the data key, nonces, version ids, one-time keys) comes in as arguments:
//!   this crate draws none, so the simulator can replay a run.
//!
//! Plaintext and keys live in [`Zeroizing`] buffers, wiped when dropped.

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, XChaCha20Poly1305, XNonce};
use ring::hkdf;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::{Body, ObjectEntry, ObjectKey, ObjectVersion, Seal, check_entries};
use crate::names::NodeId;

/// Bytes of a sealed data key: 32 and a 16-byte tag.
pub const WRAPPED_BYTES: usize = 48;

/// Decrypted entries of a secret (file name, value), wiped when dropped.
pub type Plain = Vec<(String, Zeroizing<Vec<u8>>)>;

/// Why a secret could not be sealed or opened. Never carries key material or plaintext.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The version holds no seal for this node: it was not a recipient.
    #[error("{key} is not sealed to node {node}")]
    NotSealed {
        /// The secret.
        key: ObjectKey,
        /// The node.
        node: NodeId,
    },
    /// A seal or the ciphertext failed authentication: wrong key, or altered bytes.
    #[error("{key}: {what} does not open with this node's key (altered, or sealed to another key)")]
    Corrupt {
        /// The secret.
        key: ObjectKey,
        /// Which part.
        what: &'static str,
    },
    /// A recipient's public key is not usable (a low-order point).
    #[error("node {0}'s public key is not usable for sealing")]
    BadPublicKey(NodeId),
    /// The object is a config, deleted, or its entries are malformed.
    #[error("{0}")]
    Invalid(String),
}

/// A node's X25519 key pair for secrets (its private half never leaves the node).
pub struct NodeKeys {
    secret: StaticSecret,
    public: PublicKey,
}

impl std::fmt::Debug for NodeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKeys(public {})", hex(self.public.as_bytes()))
    }
}

impl NodeKeys {
    /// The key pair of a stored (or freshly drawn) 32-byte private key.
    pub fn from_secret(bytes: [u8; 32]) -> Self {
        let secret = StaticSecret::from(bytes);
        let public = PublicKey::from(&secret);
        NodeKeys { secret, public }
    }

    /// The public half, to publish.
    pub fn public(&self) -> [u8; 32] {
        *self.public.as_bytes()
    }

    /// The private half, to store (0600).
    pub fn secret_bytes(&self) -> Zeroizing<[u8; 32]> {
        Zeroizing::new(self.secret.to_bytes())
    }
}

/// A version's data key.
pub struct DataKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DataKey(..)")
    }
}

/// The randomness one sealed version needs.
pub struct Draw {
    /// The version id.
    pub id: u128,
    /// The data key.
    pub data_key: [u8; 32],
    /// The entries' nonce.
    pub nonce: [u8; 24],
}

fn data_aad(key: &ObjectKey, id: u128) -> Vec<u8> {
    let mut aad = b"starling secret v1\0".to_vec();
    aad.extend_from_slice(key.to_string().as_bytes());
    aad.push(0);
    aad.extend_from_slice(&id.to_le_bytes());
    aad
}

fn seal_aad(key: &ObjectKey, id: u128, node: &NodeId) -> Vec<u8> {
    let mut aad = b"starling seal v1\0".to_vec();
    aad.extend_from_slice(key.to_string().as_bytes());
    aad.push(0);
    aad.extend_from_slice(&id.to_le_bytes());
    aad.extend_from_slice(node.as_str().as_bytes());
    aad
}

/// Encrypts `entries` as a new version of secret `key`. Returns the version (its `by` empty)
/// and its data key, to seal to recipients with [`seal_to`].
pub fn seal_secret(
    key: &ObjectKey,
    entries: Vec<(String, Vec<u8>)>,
    draw: Draw,
) -> Result<(ObjectVersion, DataKey), SealError> {
    let (keys, size) =
        check_entries(&entries).map_err(|e| SealError::Invalid(format!("{key} {e}")))?;
    let mut entries = entries;
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let plain = Zeroizing::new(
        postcard::to_allocvec(&entries).map_err(|e| SealError::Invalid(e.to_string()))?,
    );
    // The caller's copy of the values is wiped with the entries here.
    for (_, value) in &mut entries {
        zeroize::Zeroize::zeroize(value);
    }
    let data_key = DataKey(Zeroizing::new(draw.data_key));
    let cipher = XChaCha20Poly1305::new((&*data_key.0).into());
    let aad = data_aad(key, draw.id);
    let ciphertext = cipher
        .encrypt(
            XNonce::from_slice(&draw.nonce),
            Payload {
                msg: &plain,
                aad: &aad,
            },
        )
        .map_err(|_| SealError::Invalid("encryption failed".into()))?;
    let version = ObjectVersion {
        id: draw.id,
        by: String::new(),
        keys,
        size,
        body: Body::Sealed {
            nonce: draw.nonce,
            ciphertext,
        },
    };
    Ok((version, data_key))
}

/// The key that wraps a data key for one recipient.
fn wrapping_key(
    shared: &[u8; 32],
    ephemeral: &[u8; 32],
    recipient: &[u8; 32],
) -> Zeroizing<[u8; 32]> {
    struct Len32;
    impl hkdf::KeyType for Len32 {
        fn len(&self) -> usize {
            32
        }
    }
    let salt = hkdf::Salt::new(hkdf::HKDF_SHA256, b"starling seal v1");
    let prk = salt.extract(shared);
    let info = [&ephemeral[..], &recipient[..]];
    let mut out = Zeroizing::new([0u8; 32]);
    // expand/fill fail only when asked for more than 255 hash lengths; 32 bytes never is.
    if let Ok(okm) = prk.expand(&info, Len32) {
        let _ = okm.fill(&mut out[..]);
    }
    out
}

/// Seals `data_key` (of version `id` of secret `key`) to `node`, whose public key is
/// `public`, with the one-time private key `ephemeral`.
pub fn seal_to(
    data_key: &DataKey,
    key: &ObjectKey,
    id: u128,
    node: &NodeId,
    public: &[u8; 32],
    ephemeral: [u8; 32],
) -> Result<Seal, SealError> {
    let one_time = StaticSecret::from(ephemeral);
    let ephemeral_public = PublicKey::from(&one_time);
    let shared = Zeroizing::new(
        one_time
            .diffie_hellman(&PublicKey::from(*public))
            .to_bytes(),
    );
    if shared.iter().all(|b| *b == 0) {
        return Err(SealError::BadPublicKey(node.clone()));
    }
    let kek = wrapping_key(&shared, ephemeral_public.as_bytes(), public);
    let cipher = ChaCha20Poly1305::new((&*kek).into());
    let aad = seal_aad(key, id, node);
    // The wrapping key is used once (a fresh one-time key per seal), so a zero nonce is safe.
    let wrapped = cipher
        .encrypt(
            &Default::default(),
            Payload {
                msg: &data_key.0[..],
                aad: &aad,
            },
        )
        .map_err(|_| SealError::Invalid("sealing failed".into()))?;
    Ok(Seal {
        version: id,
        ephemeral: *ephemeral_public.as_bytes(),
        wrapped,
    })
}

/// Opens the data key of `entry`'s current version with this node's keys.
pub fn open_data_key(
    entry: &ObjectEntry,
    node: &NodeId,
    mine: &NodeKeys,
) -> Result<DataKey, SealError> {
    let Some(version) = &entry.register.val else {
        return Err(SealError::Invalid(format!("{} is deleted", entry.key)));
    };
    let seal = entry
        .seals
        .get(node)
        .filter(|s| s.version == version.id)
        .ok_or_else(|| SealError::NotSealed {
            key: entry.key.clone(),
            node: node.clone(),
        })?;
    let shared = Zeroizing::new(
        mine.secret
            .diffie_hellman(&PublicKey::from(seal.ephemeral))
            .to_bytes(),
    );
    let kek = wrapping_key(&shared, &seal.ephemeral, &mine.public());
    let cipher = ChaCha20Poly1305::new((&*kek).into());
    let aad = seal_aad(&entry.key, version.id, node);
    let corrupt = || SealError::Corrupt {
        key: entry.key.clone(),
        what: "its seal",
    };
    let plain = Zeroizing::new(
        cipher
            .decrypt(
                &Default::default(),
                Payload {
                    msg: &seal.wrapped,
                    aad: &aad,
                },
            )
            .map_err(|_| corrupt())?,
    );
    let bytes: [u8; 32] = plain[..].try_into().map_err(|_| corrupt())?;
    Ok(DataKey(Zeroizing::new(bytes)))
}

/// Decrypts `entry`'s current version with its data key.
pub fn open(entry: &ObjectEntry, data_key: &DataKey) -> Result<Plain, SealError> {
    let Some(version) = &entry.register.val else {
        return Err(SealError::Invalid(format!("{} is deleted", entry.key)));
    };
    let Body::Sealed { nonce, ciphertext } = &version.body else {
        return Err(SealError::Invalid(format!("{} is not sealed", entry.key)));
    };
    let corrupt = |what| SealError::Corrupt {
        key: entry.key.clone(),
        what,
    };
    let cipher = XChaCha20Poly1305::new((&*data_key.0).into());
    let aad = data_aad(&entry.key, version.id);
    let plain = Zeroizing::new(
        cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: &aad,
                },
            )
            .map_err(|_| corrupt("its ciphertext"))?,
    );
    let entries: Vec<(String, Vec<u8>)> =
        postcard::from_bytes(&plain).map_err(|_| corrupt("its entries"))?;
    Ok(entries
        .into_iter()
        .map(|(name, value)| (name, Zeroizing::new(value)))
        .collect())
}

/// Opens `entry` for this node: its seal, then its entries.
pub fn open_for(entry: &ObjectEntry, node: &NodeId, mine: &NodeKeys) -> Result<Plain, SealError> {
    let data_key = open_data_key(entry, node, mine)?;
    open(entry, &data_key)
}

/// Lowercase hex, for public keys in gossip and listings.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A 32-byte public key from 64 hex digits.
pub fn parse_public(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}
