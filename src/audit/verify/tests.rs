use super::*;
use crate::audit::record::{AuditEvent, EventKind};
use crate::audit::signer::AuditSigner;

struct Trail {
    records: Vec<StoredRecord>,
    checkpoints: Vec<SignedCheckpoint>,
    head: ChainHead,
}

/// `n` records signed by `first`, rotating to `second` after record `rotate_at`, with a
/// checkpoint after every 4 records.
fn trail(first: &AuditSigner, second: &AuditSigner, n: u64, rotate_at: u64) -> Trail {
    let mut head = ChainHead::empty();
    let mut records = Vec::new();
    let mut checkpoints = Vec::new();
    let mut signer = first;
    while head.seq < n {
        let event = if head.seq + 1 == rotate_at {
            let mut rotation = AuditEvent::now(EventKind::KeyRotated);
            rotation.new_kid = Some(second.kid().to_owned());
            rotation.public_key = Some(BASE64.encode(second.verifying_key().as_bytes()));
            rotation
        } else {
            AuditEvent::now(EventKind::Accepted)
        };
        let body = event.body(head.seq + 1, &head.hash, signer.kid());
        head.seq += 1;
        head.hash = sha256_hex(&body);
        head.frontier.push(leaf_hash(&body));
        records.push(StoredRecord {
            location: format!("entry {}", head.seq),
            signature: BASE64.encode(signer.sign(&body)),
            body: String::from_utf8_lossy(&body).into_owned(),
        });
        if head.seq == rotate_at {
            signer = second;
        }
        if head.seq.is_multiple_of(4) {
            checkpoints.push(
                Checkpoint::new(head.seq, &head.frontier.root(), &head.hash, signer.kid())
                    .sign(signer),
            );
        }
    }
    Trail {
        records,
        checkpoints,
        head,
    }
}

fn check(trail: &Trail, records: &[StoredRecord], key: &AuditSigner) -> Result<Verified, Problem> {
    verify_records(
        records,
        &[key.verifying_key()],
        StartPoint::genesis(),
        &trail.checkpoints,
        Some(&trail.head),
    )
}

fn resign(record: &mut StoredRecord, signer: &AuditSigner) {
    record.signature = BASE64.encode(signer.sign(record.body.as_bytes()));
}

#[test]
fn an_intact_trail_with_a_rotation_verifies_from_the_first_key_alone() {
    let (first, second) = (AuditSigner::generate(), AuditSigner::generate());
    let trail = trail(&first, &second, 10, 6);
    let verified = check(&trail, &trail.records, &first);
    assert_eq!(
        verified.map(|v| (v.records, v.checkpoints, v.active_kid, v.rotations)),
        Ok((
            10,
            2,
            Some(second.kid().to_owned()),
            vec![second.kid().to_owned()]
        ))
    );
}

#[test]
fn every_kind_of_tampering_is_found_at_its_record() {
    let (first, second) = (AuditSigner::generate(), AuditSigner::generate());
    let trail = trail(&first, &second, 10, 6);
    let found = |records: &[StoredRecord]| {
        check(&trail, records, &first)
            .err()
            .map(|p| (p.kind, p.seq))
    };

    let mut modified = trail.records.clone();
    modified[2].body = modified[2].body.replace("accepted", "denied");
    assert_eq!(found(&modified), Some((ProblemKind::Modified, 3)));

    let mut removed = trail.records.clone();
    removed.remove(1);
    assert_eq!(found(&removed), Some((ProblemKind::Sequence, 2)));

    let mut inserted = trail.records.clone();
    inserted.insert(3, trail.records[1].clone());
    assert_eq!(found(&inserted), Some((ProblemKind::Sequence, 4)));

    let mut reordered = trail.records.clone();
    reordered.swap(1, 3);
    assert_eq!(found(&reordered), Some((ProblemKind::Sequence, 2)));

    // Cut after the checkpoint at 8: the checkpoint notices (the head alone would too).
    assert_eq!(
        found(&trail.records[..7]),
        Some((ProblemKind::Truncated, 8))
    );

    let stranger = AuditSigner::generate();
    let mut wrong_key = trail.records.clone();
    let forged = AuditEvent::now(EventKind::Accepted).body(
        3,
        &sha256_hex(wrong_key[1].body.as_bytes()),
        stranger.kid(),
    );
    wrong_key[2].body = String::from_utf8_lossy(&forged).into_owned();
    resign(&mut wrong_key[2], &stranger);
    assert_eq!(found(&wrong_key), Some((ProblemKind::UnknownKey, 3)));

    // Record 8 rewritten and re-signed with the key that was retired at record 6.
    let mut retired = trail.records.clone();
    let forged = AuditEvent::now(EventKind::Started).body(
        8,
        &sha256_hex(retired[6].body.as_bytes()),
        first.kid(),
    );
    retired[7].body = String::from_utf8_lossy(&forged).into_owned();
    resign(&mut retired[7], &first);
    assert_eq!(found(&retired), Some((ProblemKind::RetiredKey, 8)));

    // A rewritten history, consistently re-chained and re-signed with the current key:
    // only the checkpoint can tell.
    let mut rewritten = trail.records.clone();
    let mut prev = sha256_hex(rewritten[6].body.as_bytes());
    for (i, record) in rewritten.iter_mut().enumerate().skip(7) {
        let body = AuditEvent::now(EventKind::Denied).body(i as u64 + 1, &prev, second.kid());
        prev = sha256_hex(&body);
        record.body = String::from_utf8_lossy(&body).into_owned();
        resign(record, &second);
    }
    let mut head = trail.head.clone();
    head.hash = prev;
    assert_eq!(
        verify_records(
            &rewritten,
            &[first.verifying_key()],
            StartPoint::genesis(),
            &trail.checkpoints,
            Some(&head)
        )
        .err()
        .map(|p| (p.kind, p.seq)),
        Some((ProblemKind::CheckpointMismatch, 8))
    );
}

#[test]
fn records_between_signatures_are_covered_by_the_next_one() {
    let (first, second) = (AuditSigner::generate(), AuditSigner::generate());
    let mut trail = trail(&first, &second, 9, 100);
    // Appended in three batches: only each batch's last record is signed.
    for (i, record) in trail.records.iter_mut().enumerate() {
        if (i + 1) % 3 != 0 {
            record.signature.clear();
        }
    }
    assert!(check(&trail, &trail.records, &first).is_ok());

    let mut edited = trail.records.clone();
    edited[4].body = edited[4].body.replace("accepted", "denied");
    let found = check(&trail, &edited, &first).err();
    assert_eq!(
        found.as_ref().map(|p| (p.kind, p.seq)),
        Some((ProblemKind::ChainBroken, 6))
    );
    assert!(found.is_some_and(|p| p.detail.contains("record 5 (entry 5)")));

    // The signed record closing the last batch cut off (the head rewritten to match).
    let mut head = trail.head.clone();
    head.seq = 8;
    head.hash = sha256_hex(trail.records[7].body.as_bytes());
    let cut = verify_records(
        &trail.records[..8],
        &[first.verifying_key()],
        StartPoint::genesis(),
        &trail.checkpoints,
        Some(&head),
    );
    assert_eq!(
        cut.err().map(|p| (p.kind, p.seq)),
        Some((ProblemKind::Truncated, 7))
    );
}

/// The start point of `trail` with records 1..=`seq` trimmed, as the trim marker holds it.
fn start_after(trail: &Trail, seq: usize, kid: &str) -> StartPoint {
    let mut frontier = Frontier::default();
    for record in &trail.records[..seq] {
        frontier.push(leaf_hash(record.body.as_bytes()));
    }
    StartPoint {
        seq: seq as u64,
        hash: sha256_hex(trail.records[seq - 1].body.as_bytes()),
        frontier,
        kid: Some(kid.to_owned()),
    }
}

#[test]
fn a_trail_trimmed_at_a_checkpoint_verifies_from_its_start_point() {
    let (first, second) = (AuditSigner::generate(), AuditSigner::generate());
    let trail = trail(&first, &second, 10, 20);
    let verified = verify_records(
        &trail.records[4..],
        &[first.verifying_key()],
        start_after(&trail, 4, first.kid()),
        &trail.checkpoints,
        Some(&trail.head),
    );
    assert_eq!(verified.map(|v| (v.records, v.checkpoints)), Ok((6, 1)));
}

#[test]
fn a_trim_marker_no_signed_checkpoint_vouches_for_is_refused() {
    // Records deleted from the front and the marker forged from their public hashes.
    let (first, second) = (AuditSigner::generate(), AuditSigner::generate());
    let trail = trail(&first, &second, 10, 20);
    let forged = verify_records(
        &trail.records[5..],
        &[first.verifying_key()],
        start_after(&trail, 5, first.kid()),
        &trail.checkpoints,
        Some(&trail.head),
    );
    assert_eq!(
        forged.err().map(|p| (p.kind, p.seq, p.location)),
        Some((ProblemKind::CheckpointMismatch, 5, "the trim marker".into()))
    );
    // At a checkpoint's size, but naming a key that did not sign it.
    let other = AuditSigner::generate();
    let wrong_key = verify_records(
        &trail.records[4..],
        &[first.verifying_key(), other.verifying_key()],
        start_after(&trail, 4, other.kid()),
        &trail.checkpoints,
        Some(&trail.head),
    );
    assert_eq!(
        wrong_key.err().map(|p| p.kind),
        Some(ProblemKind::CheckpointMismatch)
    );
    // Nothing left after the marker: still checked.
    let everything = verify_records(
        &[],
        &[first.verifying_key()],
        start_after(&trail, 10, first.kid()),
        &trail.checkpoints,
        None,
    );
    assert_eq!(
        everything.err().map(|p| p.kind),
        Some(ProblemKind::CheckpointMismatch)
    );
}

/// A signed `key_rotated` record introducing a small-order key — the identity, in its
/// canonical encoding or a non-canonical one (y = p + 1) — would let anyone append records
/// that "verify" under it with the fixed pair R = B, s = 1. The rotation is refused, and a
/// strict check refuses such a signature even under a key given by hand.
#[test]
fn a_rotation_to_a_weak_key_is_refused_and_no_fixed_signature_forges_a_record() {
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let mut non_canonical = [0xffu8; 32];
    non_canonical[0] = 0xee;
    non_canonical[31] = 0x7f;
    // R = the base point (compressed), s = 1.
    let mut forged = [0u8; 64];
    forged[0] = 0x58;
    forged[1..32].fill(0x66);
    forged[32] = 1;
    for weak in [identity, non_canonical] {
        let weak_key = VerifyingKey::from_bytes(&weak).expect("a point");
        assert!(strong_key(&weak).is_none());
        let first = AuditSigner::generate();
        let mut head = ChainHead::empty();
        let mut records = Vec::new();
        for seq in 1..=3u64 {
            let (event, kid) = if seq == 2 {
                let mut rotation = AuditEvent::now(EventKind::KeyRotated);
                rotation.new_kid = Some(key_id(&weak_key));
                rotation.public_key = Some(BASE64.encode(weak));
                (rotation, first.kid().to_owned())
            } else if seq == 1 {
                (AuditEvent::now(EventKind::Accepted), first.kid().to_owned())
            } else {
                (AuditEvent::now(EventKind::Accepted), key_id(&weak_key))
            };
            let body = event.body(seq, &head.hash, &kid);
            head.seq = seq;
            head.hash = sha256_hex(&body);
            head.frontier.push(leaf_hash(&body));
            let signature = if seq == 3 {
                BASE64.encode(forged)
            } else {
                BASE64.encode(first.sign(&body))
            };
            records.push(StoredRecord {
                location: format!("entry {seq}"),
                signature,
                body: String::from_utf8_lossy(&body).into_owned(),
            });
        }
        let checked = verify_records(
            &records,
            &[first.verifying_key()],
            StartPoint::genesis(),
            &[],
            Some(&head),
        );
        let problem = checked.expect_err("a forged record verified");
        assert_eq!(problem.seq, 2, "{problem}");
        // The forgery is real (a lax check takes it), and the strict check refuses it even
        // under the weak key given by hand.
        let signature = Signature::from_bytes(&forged);
        let body = records[2].body.as_bytes();
        assert!(ed25519_dalek::Verifier::verify(&weak_key, body, &signature).is_ok());
        assert!(weak_key.verify_strict(body, &signature).is_err());
    }
}
