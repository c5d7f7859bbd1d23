//! [`ProviderStore`]: the DHT's provider records, kept so that no crowd of identities can crowd
//! out anyone else's. libp2p's `MemoryStore` keeps the first 16 384 keys and the first 20
//! providers of each key: anyone could fill it, after which this node silently stopped announcing
//! its own objects (its own records counted against the same cap), and 20 fresh identities could
//! hold a key against every honest provider. Here:
//!
//! - this node's own records are kept apart and always kept (bounded by what it holds);
//! - others' records are capped per providing peer ([`MAX_PER_PEER`]), per subnet of the address
//!   it connected from ([`MAX_PER_SUBNET`]) and in all ([`MAX_RECORDS`]); when all are taken, a
//!   record from a subnet holding fewer takes the place of the newest of the subnet holding the
//!   most (fair sharing), so filling the store takes more subnets than it has places for records
//!   of each;
//! - one key has at most [`MAX_PER_KEY`] providers, at most [`MAX_PER_KEY_SUBNET`] of them from
//!   one subnet; when full, a provider from a subnet with fewer takes the place of the newest
//!   unverified record of the subnet with the most;
//! - a provider this node has verified (it fetched the object from it) is listed first and never
//!   displaced by an unverified one;
//! - a record keeps at most [`MAX_ADDRESSES`] addresses (they are the provider's claim, and
//!   memory).

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use libp2p::kad::store::{Error, RecordStore, Result};
use libp2p::kad::{ProviderRecord, Record, RecordKey};
use libp2p::PeerId;

use crate::net::peers::{PeerTable, Subnet};

/// Others' records kept, all keys together.
pub const MAX_RECORDS: usize = 32_768;
/// Providers kept per key (Kademlia's replication factor).
pub const MAX_PER_KEY: usize = 20;
/// Providers of one key from one subnet.
pub const MAX_PER_KEY_SUBNET: usize = 5;
/// Records from one providing peer, and from one subnet.
pub const MAX_PER_PEER: usize = 512;
pub const MAX_PER_SUBNET: usize = 2048;
/// Addresses kept per record.
pub const MAX_ADDRESSES: usize = 4;

#[derive(Debug, Clone)]
struct Held {
    record: ProviderRecord,
    subnet: Option<Subnet>,
    seq: u64,
    verified: bool,
}

#[derive(Debug)]
pub struct ProviderStore {
    local: PeerId,
    table: Arc<PeerTable>,
    own: HashMap<RecordKey, ProviderRecord>,
    others: HashMap<RecordKey, Vec<Held>>,
    records: usize,
    per_peer: HashMap<PeerId, usize>,
    /// Each subnet's records, oldest first (its length is the subnet's count).
    per_subnet: HashMap<Option<Subnet>, Vec<(RecordKey, PeerId)>>,
    seq: u64,
}

impl ProviderStore {
    pub fn new(local: PeerId, table: Arc<PeerTable>) -> Self {
        ProviderStore {
            local,
            table,
            own: HashMap::new(),
            others: HashMap::new(),
            records: 0,
            per_peer: HashMap::new(),
            per_subnet: HashMap::new(),
            seq: 0,
        }
    }

    /// This node fetched the object `key` names from `peer`: its record is preferred.
    pub fn verified(&mut self, key: &RecordKey, peer: &PeerId) {
        if let Some(h) = self
            .others
            .get_mut(key)
            .and_then(|l| l.iter_mut().find(|h| &h.record.provider == peer))
        {
            h.verified = true;
        }
    }

    fn subnet_count(&self, s: &Option<Subnet>) -> usize {
        self.per_subnet.get(s).map_or(0, Vec::len)
    }

    /// Room on `list` for a record from `subnet`: `Some(None)` = room, `Some(Some(i))` = after
    /// evicting entry `i`, `None` = no room.
    fn room_on_key(list: &[Held], subnet: Option<Subnet>) -> Option<Option<usize>> {
        let mine = list.iter().filter(|h| h.subnet == subnet).count();
        if mine >= MAX_PER_KEY_SUBNET {
            return None;
        }
        if list.len() < MAX_PER_KEY {
            return Some(None);
        }
        let mut per: HashMap<Option<Subnet>, usize> = HashMap::new();
        for h in list.iter().filter(|h| !h.verified) {
            *per.entry(h.subnet).or_default() += 1;
        }
        let (&crowded, &most) = per.iter().max_by_key(|(s, n)| (**n, **s))?;
        if most < mine + 2 {
            return None;
        }
        let newest = list
            .iter()
            .enumerate()
            .filter(|(_, h)| h.subnet == crowded && !h.verified)
            .max_by_key(|(_, h)| h.seq)?;
        Some(Some(newest.0))
    }

    /// When every record place is taken: the newest record of the subnet holding the most, if it
    /// holds at least two more than `subnet`.
    fn room_in_all(&self, subnet: Option<Subnet>) -> Option<(RecordKey, PeerId)> {
        let mine = self.subnet_count(&subnet);
        let (_, list) = self.per_subnet.iter().max_by_key(|(s, l)| (l.len(), **s))?;
        if list.len() < mine + 2 {
            return None;
        }
        list.last().cloned()
    }

    fn add_other(&mut self, mut record: ProviderRecord) -> Result<()> {
        record.addresses.truncate(MAX_ADDRESSES);
        let subnet = self.table.ip(&record.provider).map(Subnet::of);
        if let Some(h) = self
            .others
            .get_mut(&record.key)
            .and_then(|l| l.iter_mut().find(|h| h.record.provider == record.provider))
        {
            h.record = record;
            return Ok(());
        }
        let peer = record.provider;
        if self.per_peer.get(&peer).copied().unwrap_or(0) >= MAX_PER_PEER
            || self.subnet_count(&subnet) >= MAX_PER_SUBNET
        {
            return Err(Error::MaxProvidedKeys);
        }
        let list = self.others.get(&record.key).map_or(&[][..], |l| &l[..]);
        let Some(evict_on_key) = Self::room_on_key(list, subnet) else {
            return Err(Error::MaxProvidedKeys);
        };
        if evict_on_key.is_none() && self.records >= MAX_RECORDS {
            let (k, p) = self.room_in_all(subnet).ok_or(Error::MaxProvidedKeys)?;
            self.remove_provider(&k, &p);
        }
        if let Some(i) = evict_on_key {
            let k = record.key.clone();
            let p = self
                .others
                .get(&k)
                .and_then(|l| l.get(i))
                .map(|h| h.record.provider);
            if let Some(p) = p {
                self.remove_provider(&k, &p);
            }
        }
        self.seq += 1;
        let key = record.key.clone();
        let held = Held {
            record,
            subnet,
            seq: self.seq,
            verified: false,
        };
        self.others.entry(key.clone()).or_default().push(held);
        self.records += 1;
        *self.per_peer.entry(peer).or_default() += 1;
        self.per_subnet.entry(subnet).or_default().push((key, peer));
        Ok(())
    }
}

impl RecordStore for ProviderStore {
    type RecordsIter<'a> = std::iter::Empty<Cow<'a, Record>>;
    type ProvidedIter<'a> = std::iter::Map<
        std::collections::hash_map::Values<'a, RecordKey, ProviderRecord>,
        fn(&'a ProviderRecord) -> Cow<'a, ProviderRecord>,
    >;

    // Value records are not used by zdn: none is ever stored.
    fn get(&self, _: &RecordKey) -> Option<Cow<'_, Record>> {
        None
    }

    fn put(&mut self, _: Record) -> Result<()> {
        Err(Error::MaxRecords)
    }

    fn remove(&mut self, _: &RecordKey) {}

    fn records(&self) -> Self::RecordsIter<'_> {
        std::iter::empty()
    }

    fn add_provider(&mut self, record: ProviderRecord) -> Result<()> {
        if record.provider == self.local {
            self.own.insert(record.key.clone(), record);
            return Ok(());
        }
        self.add_other(record)
    }

    fn providers(&self, key: &RecordKey) -> Vec<ProviderRecord> {
        let mut others: Vec<&Held> = self
            .others
            .get(key)
            .map(|l| l.iter().collect())
            .unwrap_or_default();
        others.sort_by_key(|h| (!h.verified, h.seq));
        self.own
            .get(key)
            .into_iter()
            .chain(others.into_iter().map(|h| &h.record))
            .take(MAX_PER_KEY)
            .cloned()
            .collect()
    }

    fn provided(&self) -> Self::ProvidedIter<'_> {
        self.own.values().map(Cow::Borrowed)
    }

    fn remove_provider(&mut self, key: &RecordKey, peer: &PeerId) {
        if peer == &self.local {
            self.own.remove(key);
            return;
        }
        let Some(list) = self.others.get_mut(key) else {
            return;
        };
        let Some(i) = list.iter().position(|h| &h.record.provider == peer) else {
            return;
        };
        let gone = list.swap_remove(i);
        if list.is_empty() {
            self.others.remove(key);
        }
        self.records -= 1;
        if let Some(n) = self.per_peer.get_mut(peer) {
            *n -= 1;
            if *n == 0 {
                self.per_peer.remove(peer);
            }
        }
        if let Some(l) = self.per_subnet.get_mut(&gone.subnet) {
            if let Some(j) = l.iter().rposition(|(k, p)| k == key && p == peer) {
                l.remove(j);
            }
            if l.is_empty() {
                self.per_subnet.remove(&gone.subnet);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::IpAddr;

    fn key(s: &str) -> RecordKey {
        RecordKey::new(&s.as_bytes().to_vec())
    }

    fn rec(key: &RecordKey, p: PeerId) -> ProviderRecord {
        ProviderRecord::new(key.clone(), p, Vec::new())
    }

    fn setup() -> (ProviderStore, Arc<PeerTable>, PeerId) {
        let table = Arc::new(PeerTable::default());
        let local = PeerId::random();
        (ProviderStore::new(local, table.clone()), table, local)
    }

    fn peer_at(table: &PeerTable, ip: &str) -> PeerId {
        let p = PeerId::random();
        table.connected(p, Some(ip.parse::<IpAddr>().unwrap()), false);
        p
    }

    #[test]
    fn a_full_store_keeps_own_records_and_makes_room_for_a_subnet_under_its_share() {
        let (mut s, table, local) = setup();
        // Four identities in each of enough subnets to fill every place, and more.
        let subnets = MAX_RECORDS / MAX_PER_SUBNET + 2;
        for i in 0..subnets * 4 {
            let p = peer_at(
                &table,
                &format!("10.{}.{}.{}", i / 4 / 200, i / 4 % 200, i % 4),
            );
            for k in 0..MAX_PER_PEER {
                let _ = s.add_provider(rec(&key(&format!("{i}/{k}")), p));
            }
        }
        assert_eq!(s.records, MAX_RECORDS);
        assert!(s.per_subnet.values().all(|l| l.len() <= MAX_PER_SUBNET));
        let mine = key("mine");
        s.add_provider(rec(&mine, local)).unwrap();
        assert_eq!(s.provided().count(), 1);
        assert_eq!(s.providers(&mine)[0].provider, local);
        let honest = peer_at(&table, "192.0.2.1");
        s.add_provider(rec(&key("honest"), honest)).unwrap();
        assert_eq!(s.records, MAX_RECORDS);
        assert_eq!(s.providers(&key("honest"))[0].provider, honest);
        let counted: usize = s.per_subnet.values().map(Vec::len).sum();
        assert_eq!(counted, MAX_RECORDS);
        assert_eq!(s.per_peer.values().sum::<usize>(), MAX_RECORDS);
    }

    #[test]
    fn a_crowd_from_one_subnet_cannot_hold_a_key() {
        let (mut s, table, _) = setup();
        let key = key("object");
        for i in 0..50 {
            let p = peer_at(&table, &format!("10.0.0.{i}"));
            let _ = s.add_provider(rec(&key, p));
        }
        assert_eq!(s.providers(&key).len(), MAX_PER_KEY_SUBNET);
        let honest = peer_at(&table, "192.0.2.1");
        s.add_provider(rec(&key, honest)).unwrap();
        assert!(s.providers(&key).iter().any(|r| r.provider == honest));
    }

    #[test]
    fn a_full_key_makes_room_for_a_subnet_under_its_share_and_keeps_verified_ones() {
        let (mut s, table, _) = setup();
        let key = key("object");
        // Four crowded subnets of five, one of them verified.
        let mut first = None;
        for net in 0..4 {
            for i in 0..5 {
                let p = peer_at(&table, &format!("10.0.{net}.{i}"));
                s.add_provider(rec(&key, p)).unwrap();
                first.get_or_insert(p);
            }
        }
        let first = first.unwrap();
        s.verified(&key, &first);
        let honest = peer_at(&table, "192.0.2.1");
        s.add_provider(rec(&key, honest)).unwrap();
        let got = s.providers(&key);
        assert_eq!(got.len(), MAX_PER_KEY);
        assert_eq!(got[0].provider, first, "the verified one first");
        assert!(got.iter().any(|r| r.provider == honest));
        assert_eq!(s.per_peer.values().sum::<usize>(), MAX_PER_KEY);
    }
}
