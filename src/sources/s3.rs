//! S3 environment files: `containerDefinitions[].environmentFiles[]` of type `s3`
//! (`arn:aws:s3:::bucket/key.env`), which ECS reads when a task starts, exactly like a secret. A
//! service is stale when an object it names was written after its deployment began.
//!
//! **Never the object.** Its date comes from *listing* the bucket with the key as prefix
//! (`ListObjectsV2`, the `s3:ListBucket` permission), which answers `LastModified` and `ETag` and
//! not a byte of the file; `s3:GetObject` is never called (there is no port for it), never
//! granted, and denied explicitly by the templates. On a versioned bucket the listing shows the
//! current version; a delete marker hides the object as it hides it from ECS.
//!
//! **Identity** is partition + bucket + key: bucket names are unique within a partition, and an
//! object ARN carries neither account nor region. A bucket of another account is listed with
//! the credentials of the target whose services reference it; a refusal makes only the
//! references to that object unresolved ([`Unresolved::Denied`], naming the call, the object and
//! the grant), so only its dependants are `unknown`.
//!
//! Its identity and listing state ([`S3ObjectId`], [`S3State`]) live with the other identities
//! in [`crate::reference`], and clauses 2 and 3 with the rule in [`crate::decide`] (the
//! vocabulary every module shares, see [`crate::sources`]).
//!
//! **The rule** (numbered as the S3 clauses in [`crate::decide`], with *d* the deployment's
//! `createdAt` and *W* the object's `LastModified`):
//!
//! 1. the listing has no such key (deleted, or a delete marker is current) → **unresolved**: new
//!    tasks of the service cannot start ([`Unresolved::ObjectMissing`]);
//! 2. *d* < *W* + 1 s → **stale**: the object was written after the deployment (S3 dates are whole
//!    seconds, so a write in the deployment's own second counts as after, and the usual settling
//!    keeps our own rollout out of that second);
//! 3. otherwise **fresh**.
//!
//! Every write moves *W*, also one that rewrites identical bytes: ecs-reloader cannot tell
//! without reading the object (or a version history, not read yet), so such a write rolls, once.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::{self, StreamExt};

use super::Wanted;
use super::{ChangeKind, Cx, EventView, Lookup, Missing, Read, Routing, Source, States, Subject};
use crate::aws::{AwsError, Clients, ErrorKind};
use crate::decide::{RefState, Unresolved};
use crate::reference::{Home, SecretIdentity, SecretRef};

#[cfg(test)]
use crate::reference::S3_LIST_CALL as LIST_CALL;
use crate::reference::{S3ObjectId, S3State};

/// The S3 environment-file source.
pub(crate) struct S3;

impl Source for S3 {
    fn lookup(&self, r: &SecretRef, _home: &Home) -> Option<(Lookup, bool)> {
        let SecretRef::S3File(o) = r else {
            return None;
        };
        Some((Lookup::Object(o.clone()), false))
    }

    fn named(&self, _name: &str, _home: &Home) -> Option<(Lookup, SecretRef)> {
        // The tag's bare names are secrets or parameters; an object is named by its ARN.
        None
    }

    fn answers(&self, lookup: &Lookup) -> bool {
        matches!(lookup, Lookup::Object(_))
    }

    fn look_up<'a>(&'a self, cx: Cx<'a>, wanted: Vec<Wanted>) -> BoxFuture<'a, States> {
        Box::pin(async move {
            stream::iter(wanted)
                .map(|w| async move {
                    let state = match &w.key {
                        Lookup::Object(id) => object_state(cx.clients, id).await,
                        other => Err(Unresolved::MissingMetadata {
                            resource: other.resource(),
                            what: "an S3 listing",
                        }),
                    };
                    (w.key, state.map(Arc::new))
                })
                .buffer_unordered(cx.concurrency.max(1))
                .collect()
                .await
        })
    }

    fn names(&self, r: &SecretRef, id: &SecretIdentity, _home: &Home) -> bool {
        matches!((r, id), (SecretRef::S3File(o), SecretIdentity::S3Object(id)) if o == id)
    }

    fn identify<'a>(
        &'a self,
        _clients: &'a Clients,
        r: &'a SecretRef,
        _home: &'a Home,
        _confirm: bool,
    ) -> Option<BoxFuture<'a, Result<Option<SecretIdentity>, AwsError>>> {
        let SecretRef::S3File(o) = r else {
            return None;
        };
        // Identified by its ARN alone: nothing to look up.
        let id = SecretIdentity::S3Object(o.clone());
        Some(Box::pin(async move { Ok(Some(id)) }))
    }

    fn read_event(&self, e: &EventView<'_>) -> Option<Result<Read, Missing>> {
        if e.source != "aws.s3" || !matches!(e.detail_type, "Object Created" | "Object Deleted") {
            return None;
        }
        Some(
            event_object(e.detail)
                .map(|(bucket, key)| {
                    Read::Change(
                        Subject::S3Object {
                            region: e.region.map(String::from),
                            bucket,
                            key,
                        },
                        ChangeKind::S3Object {
                            deleted: e.detail_type == "Object Deleted",
                        },
                    )
                })
                .map_err(|field| Missing {
                    shape: "S3 object",
                    field,
                }),
        )
    }

    fn routing(&self, s: &Subject) -> Option<Routing> {
        // Any target's services may name any bucket (another account's included), and each
        // lists it with its own credentials.
        matches!(s, Subject::S3Object { .. }).then_some(Routing::Everyone)
    }

    fn subject_identity(&self, s: &Subject, own_region: &str) -> Option<SecretIdentity> {
        let Subject::S3Object {
            region,
            bucket,
            key,
        } = s
        else {
            return None;
        };
        Some(SecretIdentity::S3Object(S3ObjectId::in_region(
            region.as_deref().unwrap_or(own_region),
            bucket,
            key,
        )))
    }

    fn owner(&self, _s: &Subject) -> Option<String> {
        // A bucket's name says nothing of its account.
        None
    }

    fn pin(&self, _id: &SecretIdentity) -> Option<String> {
        None
    }

    fn labels_moved<'k>(&self, kind: &'k ChangeKind) -> Option<Vec<&'k str>> {
        // An object has no labels: its every write is dated by the listing.
        matches!(kind, ChangeKind::S3Object { .. }).then(Vec::new)
    }

    fn watch_keys(&self, r: &SecretRef, _home: &Home) -> Option<Vec<String>> {
        let SecretRef::S3File(o) = r else {
            return None;
        };
        Some(vec![key(o)])
    }

    fn identity_key(&self, id: &SecretIdentity) -> Option<String> {
        let SecretIdentity::S3Object(o) = id else {
            return None;
        };
        Some(key(o))
    }
}

/// An object's key in the watch cache: its identity, whole (it has no lookalike forms).
fn key(o: &S3ObjectId) -> String {
    format!("s3 {} {} {}", o.partition, o.bucket, o.key)
}

/// Lists the object (never reads it) and returns its state; S3 clause 1 and refusals as
/// [`Unresolved`].
pub(crate) async fn object_state(
    clients: &Clients,
    id: &S3ObjectId,
) -> Result<RefState, Unresolved> {
    match clients.objects.object_meta(&id.bucket, &id.key).await {
        Ok(Some(meta)) => Ok(RefState::S3Object(S3State {
            id: id.clone(),
            last_modified: meta.last_modified,
            etag: meta.etag,
        })),
        // 1. No such key: new tasks cannot start.
        Ok(None) => Err(Unresolved::ObjectMissing {
            object: id.to_string(),
        }),
        Err(e) => Err(unresolved(&e, id)),
    }
}

/// What a failed listing means for the references to `id`: the call, the object, what to grant.
fn unresolved(e: &AwsError, id: &S3ObjectId) -> Unresolved {
    let resource = id.to_string();
    match e.kind {
        ErrorKind::NotFound => Unresolved::ObjectMissing { object: resource },
        ErrorKind::AccessDenied => Unresolved::Denied {
            call: e.operation,
            resource,
            message: e.message.clone(),
            fix: format!(
                "allow s3:ListBucket on {} in the operator's IAM policy (the key is the listing's prefix; never s3:GetObject); a bucket of another account must allow it in its bucket policy too; if both do, an SCP or a permissions boundary denies it",
                id.bucket_arn()
            ),
        },
        ErrorKind::Throttled | ErrorKind::Transient | ErrorKind::Setup => Unresolved::Unavailable {
            call: e.operation,
            resource,
            message: e.message.clone(),
        },
        ErrorKind::Other => Unresolved::Failed {
            call: e.operation,
            resource,
            message: e.message.clone(),
        },
    }
}

/// Which object an S3 EventBridge event (`Object Created`, `Object Deleted`; the bucket's
/// EventBridge notifications must be on) is about: its bucket and key, as the event gives them.
/// (The event's kind says whether it was a deletion; either way the listing decides.)
fn event_object(detail: &serde_json::Value) -> Result<(String, String), &'static str> {
    let text = |p: &str| {
        detail
            .pointer(p)
            .and_then(serde_json::Value::as_str)
            .filter(|s| !s.trim().is_empty())
    };
    let bucket = text("/bucket/name").ok_or("detail.bucket.name")?;
    let key = text("/object/key").ok_or("detail.object.key")?;
    // S3's notifications URL-encode the key (a space as `+`); task definitions name it as it is.
    let plus_as_space = key.replace('+', " ");
    let key = percent_encoding::percent_decode_str(&plus_as_space)
        .decode_utf8()
        .map(|k| k.into_owned())
        .unwrap_or_else(|_| key.to_string());
    Ok((bucket.to_string(), key))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::judge_s3 as judge;
    use crate::reference::{parse_at, parse_declared, parse_value_from, RefError, SecretRef, Site};
    use chrono::{DateTime, Utc};

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000 + s, 0).expect("time")
    }

    fn env_file() -> Site {
        Site::EnvironmentFile {
            container: "app".into(),
        }
    }

    #[test]
    fn an_environment_file_arn_is_bucket_and_key() {
        let r = parse_at(&env_file(), "arn:aws:s3:::conf-bucket/app/prod.env").expect("parses");
        assert_eq!(
            r,
            SecretRef::S3File(S3ObjectId {
                partition: "aws".into(),
                bucket: "conf-bucket".into(),
                key: "app/prod.env".into()
            })
        );
        assert_eq!(r.to_string(), "s3://conf-bucket/app/prod.env");
    }

    #[test]
    fn malformed_environment_files_are_errors_never_panics() {
        for bad in [
            "",
            "conf-bucket/app.env",
            "arn:aws:s3:::conf-bucket",
            "arn:aws:s3:::/key",
            "arn:aws:s3:::bucket/",
            "arn:aws:s3:eu-west-1:111122223333:bucket/key",
            "arn:aws:secretsmanager:eu-west-1:111122223333:secret:x-AbCdEf",
        ] {
            assert!(parse_at(&env_file(), bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            parse_at(&env_file(), "/app/db"),
            Err(RefError::NotAnS3Object { .. })
        ));
    }

    #[test]
    fn an_s3_arn_is_no_secret_value_from_but_may_be_declared_by_tag() {
        assert!(matches!(
            parse_value_from("arn:aws:s3:::b/k.env"),
            Err(RefError::WrongService { .. })
        ));
        assert!(matches!(
            parse_declared("arn:aws:s3:::b/k.env"),
            Ok(SecretRef::S3File(_))
        ));
    }

    fn state(w: Option<DateTime<Utc>>) -> S3State {
        S3State {
            id: S3ObjectId::in_region("eu-west-1", "b", "k.env"),
            last_modified: w,
            etag: Some("\"abc\"".into()),
        }
    }

    #[test]
    fn written_after_the_deployment_is_stale_before_is_fresh() {
        let d = t(100);
        let (at, why) = judge(&state(Some(t(200))), d)
            .expect("judged")
            .expect("stale");
        assert_eq!(at, t(200));
        assert!(
            why.contains("s3://b/k.env") && why.contains("ETag abc"),
            "{why}"
        );
        assert_eq!(judge(&state(Some(t(50))), d), Ok(None));
        // The deployment's own second counts as after (whole-second dates).
        let d_ms = t(100) + chrono::Duration::milliseconds(400);
        assert!(judge(&state(Some(t(100))), d_ms).expect("judged").is_some());
        assert!(judge(&state(None), d).is_err());
    }

    #[test]
    fn event_objects_need_bucket_and_key() {
        let ok = serde_json::json!({"bucket": {"name": "b"}, "object": {"key": "k.env"}});
        assert_eq!(event_object(&ok), Ok(("b".into(), "k.env".into())));
        let no_key = serde_json::json!({"bucket": {"name": "b"}, "object": {}});
        assert!(event_object(&no_key).is_err());
    }

    #[test]
    fn a_refusal_names_the_call_the_object_and_the_grant() {
        let e = AwsError::new(
            LIST_CALL,
            "b/k.env",
            ErrorKind::AccessDenied,
            "AccessDenied",
        );
        let u = unresolved(&e, &S3ObjectId::in_region("eu-west-1", "b", "k.env"));
        let text = u.to_string();
        assert!(
            text.contains("s3:ListObjectsV2")
                && text.contains("s3://b/k.env")
                && text.contains("s3:ListBucket on arn:aws:s3:::b"),
            "{text}"
        );
    }
}
