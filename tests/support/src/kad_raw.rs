//! Kademlia messages written by hand (the protobuf of libp2p's `dht.proto`, each frame prefixed
//! by its length as an unsigned varint): an attacker does not need a DHT implementation to send a
//! node provider records, only a stream of its DHT protocol.

use futures::{AsyncReadExt, AsyncWriteExt};
use libp2p::{Multiaddr, PeerId};

use crate::adversary::Hostile;

/// zdn's DHT protocol name.
pub const KAD_PROTOCOL: &str = "/zdn/kad/1.0.0";
/// `Message.type` ADD_PROVIDER and GET_PROVIDERS.
const ADD_PROVIDER: u64 = 2;
const GET_PROVIDERS: u64 = 3;
/// The largest answer read.
const MAX_ANSWER: usize = 1 << 20;

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

/// One GET_PROVIDERS message for `key`, framed.
pub fn get_providers(key: &[u8]) -> Vec<u8> {
    let mut msg = vec![0x08];
    varint(GET_PROVIDERS, &mut msg);
    bytes_field(0x12, key, &mut msg);
    let mut framed = Vec::with_capacity(msg.len() + 3);
    varint(msg.len() as u64, &mut framed);
    framed.extend_from_slice(&msg);
    framed
}

/// A protobuf message's fields: (field number, wire type, the value's bytes; a varint's too).
fn fields(mut b: &[u8]) -> anyhow::Result<Vec<(u64, u8, &[u8])>> {
    fn read_varint(b: &mut &[u8]) -> anyhow::Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let (&x, rest) = b
                .split_first()
                .ok_or_else(|| anyhow::anyhow!("short varint"))?;
            *b = rest;
            v |= u64::from(x & 0x7f) << shift;
            if x < 0x80 {
                return Ok(v);
            }
        }
        anyhow::bail!("varint too long")
    }
    let mut out = Vec::new();
    while !b.is_empty() {
        let tag = read_varint(&mut b)?;
        let (field, wire) = (tag >> 3, (tag & 7) as u8);
        let len = match wire {
            0 => {
                let before = b;
                read_varint(&mut b)?;
                out.push((field, wire, &before[..before.len() - b.len()]));
                continue;
            }
            1 => 8,
            2 => usize::try_from(read_varint(&mut b)?)?,
            5 => 4,
            w => anyhow::bail!("wire type {w}"),
        };
        anyhow::ensure!(len <= b.len(), "field {field} runs past the message");
        let (value, rest) = b.split_at(len);
        out.push((field, wire, value));
        b = rest;
    }
    Ok(out)
}

/// The peers a GET_PROVIDERS answer lists as providers (`Message.providerPeers`, field 9; each a
/// `Peer` whose field 1 is its id).
pub fn providers_in(answer: &[u8]) -> anyhow::Result<Vec<PeerId>> {
    let mut out = Vec::new();
    for (field, wire, value) in fields(answer)? {
        if field != 9 || wire != 2 {
            continue;
        }
        for (f, w, id) in fields(value)? {
            if f == 1 && w == 2 {
                out.push(PeerId::from_bytes(id)?);
            }
        }
    }
    Ok(out)
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

impl Hostile {
    /// Asks the node which peers it knows to provide `key` (its own provider store's answer, not a
    /// lookup).
    pub async fn providers_of(&self, key: [u8; 32]) -> anyhow::Result<Vec<PeerId>> {
        let mut s = self.open(KAD_PROTOCOL).await?;
        s.write_all(&get_providers(&key)).await?;
        s.flush().await?;
        let mut len = 0usize;
        for shift in (0..28).step_by(7) {
            let mut b = [0u8; 1];
            s.read_exact(&mut b).await?;
            len |= usize::from(b[0] & 0x7f) << shift;
            if b[0] < 0x80 {
                break;
            }
        }
        anyhow::ensure!(len <= MAX_ANSWER, "an answer of {len} bytes");
        let mut answer = vec![0u8; len];
        s.read_exact(&mut answer).await?;
        providers_in(&answer)
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

    #[test]
    fn providers_are_read_from_an_answer() {
        // An ADD_PROVIDER message has the same shape as an answer's providerPeers.
        let (a, b) = (PeerId::random(), PeerId::random());
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().unwrap();
        let mut answer = Vec::new();
        for p in [a, b] {
            let m = add_provider(&[7; 32], &p, &addr);
            answer.extend_from_slice(&m[1..]);
        }
        assert_eq!(providers_in(&answer).unwrap(), [a, b]);
        assert!(
            providers_in(&[0x4a, 0x05, 0x0a]).is_err(),
            "a field past the end"
        );
    }
}
