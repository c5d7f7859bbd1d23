//! Kademlia messages written by hand (the protobuf of libp2p's `dht.proto`, each frame prefixed
//! by its length as an unsigned varint): an attacker does not need a DHT implementation to send a
//! node provider records, only a stream of its DHT protocol.

use futures::AsyncWriteExt;
use libp2p::{Multiaddr, PeerId};

use crate::adversary::Hostile;

/// zdn's DHT protocol name.
pub const KAD_PROTOCOL: &str = "/zdn/kad/1.0.0";
/// `Message.type` ADD_PROVIDER.
const ADD_PROVIDER: u64 = 2;

fn varint(mut v: u64, out: &mut Vec<u8>) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// A length-delimited protobuf field.
fn bytes_field(tag: u8, b: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    varint(b.len() as u64, out);
    out.extend_from_slice(b);
}

/// One ADD_PROVIDER message, framed: `provider` (which must be the sender) provides `key`, at
/// `addr`.
pub fn add_provider(key: &[u8], provider: &PeerId, addr: &Multiaddr) -> Vec<u8> {
    let mut peer = Vec::new();
    bytes_field(0x0a, &provider.to_bytes(), &mut peer);
    bytes_field(0x12, &addr.to_vec(), &mut peer);
    let mut msg = vec![0x08];
    varint(ADD_PROVIDER, &mut msg);
    bytes_field(0x12, key, &mut msg);
    bytes_field(0x4a, &peer, &mut msg);
    let mut framed = Vec::with_capacity(msg.len() + 3);
    varint(msg.len() as u64, &mut framed);
    framed.extend_from_slice(&msg);
    framed
}

impl Hostile {
    /// Sends the node one provider record per key (this identity providing each, at `addr`), on
    /// one DHT stream; returns the number sent.
    pub async fn add_providers(
        &self,
        keys: impl IntoIterator<Item = [u8; 32]>,
        addr: &Multiaddr,
    ) -> anyhow::Result<usize> {
        let mut s = self.open(KAD_PROTOCOL).await?;
        let mut n = 0;
        for k in keys {
            s.write_all(&add_provider(&k, &self.me, addr)).await?;
            n += 1;
            if n % 64 == 0 {
                s.flush().await?;
            }
        }
        s.flush().await?;
        // Let the node read them before the stream closes.
        s.close().await?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        let mut v = Vec::new();
        varint(300, &mut v);
        assert_eq!(v, [0xac, 0x02]);
        let m = add_provider(
            &[7; 32],
            &PeerId::random(),
            &"/ip4/127.0.0.1/tcp/1".parse().unwrap(),
        );
        assert_eq!(m[0] as usize, m.len() - 1, "one-byte length prefix");
        assert_eq!(&m[1..3], &[0x08, 0x02]);
    }
}
