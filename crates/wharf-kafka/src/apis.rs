//! The APIs Wharf serves and their version ranges: one row per handler, each range declared by the handler's
//! own module. ApiVersions advertises exactly this table, nothing more.
//!
//! Ranges start at the lowest version the codec has (old clients such as librdkafka before 2.11 enable a
//! feature only when the advertised range contains specific old versions) and go up to the newest version
//! the handler implements.

use kafka_protocol::messages::ApiKey;
use kafka_protocol::protocol::VersionRange;

use crate::handlers;

/// Every served API with its version range.
pub fn supported() -> [(ApiKey, VersionRange); 27] {
    [
        (ApiKey::Produce, handlers::produce::VERSIONS),
        (ApiKey::Fetch, handlers::fetch::VERSIONS),
        (ApiKey::ListOffsets, handlers::list_offsets::VERSIONS),
        (ApiKey::Metadata, handlers::metadata::VERSIONS),
        (ApiKey::ApiVersions, handlers::api_versions::VERSIONS),
        (
            ApiKey::CreateTopics,
            handlers::topics_admin::CREATE_TOPICS_VERSIONS,
        ),
        (
            ApiKey::DeleteTopics,
            handlers::topics_admin::DELETE_TOPICS_VERSIONS,
        ),
        (
            ApiKey::CreatePartitions,
            handlers::topics_admin::CREATE_PARTITIONS_VERSIONS,
        ),
        (
            ApiKey::DeleteRecords,
            handlers::records_admin::DELETE_RECORDS_VERSIONS,
        ),
        (
            ApiKey::OffsetForLeaderEpoch,
            handlers::records_admin::OFFSET_FOR_LEADER_EPOCH_VERSIONS,
        ),
        (
            ApiKey::DescribeConfigs,
            handlers::configs::DESCRIBE_CONFIGS_VERSIONS,
        ),
        (
            ApiKey::AlterConfigs,
            handlers::configs::ALTER_CONFIGS_VERSIONS,
        ),
        (
            ApiKey::IncrementalAlterConfigs,
            handlers::configs::INCREMENTAL_ALTER_CONFIGS_VERSIONS,
        ),
        (
            ApiKey::DescribeCluster,
            handlers::cluster::DESCRIBE_CLUSTER_VERSIONS,
        ),
        (
            ApiKey::FindCoordinator,
            handlers::groups::FIND_COORDINATOR_VERSIONS,
        ),
        (ApiKey::JoinGroup, handlers::groups::JOIN_GROUP_VERSIONS),
        (ApiKey::SyncGroup, handlers::groups::SYNC_GROUP_VERSIONS),
        (ApiKey::Heartbeat, handlers::groups::HEARTBEAT_VERSIONS),
        (ApiKey::LeaveGroup, handlers::groups::LEAVE_GROUP_VERSIONS),
        (
            ApiKey::DescribeGroups,
            handlers::groups::DESCRIBE_GROUPS_VERSIONS,
        ),
        (ApiKey::ListGroups, handlers::groups::LIST_GROUPS_VERSIONS),
        (
            ApiKey::DeleteGroups,
            handlers::groups::DELETE_GROUPS_VERSIONS,
        ),
        (
            ApiKey::OffsetCommit,
            handlers::offsets::OFFSET_COMMIT_VERSIONS,
        ),
        (
            ApiKey::OffsetFetch,
            handlers::offsets::OFFSET_FETCH_VERSIONS,
        ),
        (
            ApiKey::OffsetDelete,
            handlers::offsets::OFFSET_DELETE_VERSIONS,
        ),
        (
            ApiKey::InitProducerId,
            handlers::producers::INIT_PRODUCER_ID_VERSIONS,
        ),
        (
            ApiKey::DescribeProducers,
            handlers::producers::DESCRIBE_PRODUCERS_VERSIONS,
        ),
    ]
}

/// The range served for `key`, if it is served at all.
pub fn range(key: ApiKey) -> Option<VersionRange> {
    supported()
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, r)| r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_range_lies_within_the_codec() {
        for (key, range) in supported() {
            let codec = key.valid_versions();
            assert!(
                range.min >= codec.min && range.max <= codec.max,
                "{key:?}: {range:?} vs {codec:?}"
            );
            assert!(range.min <= range.max, "{key:?}");
        }
    }

    #[test]
    fn old_librdkafka_feature_checks_pass() {
        // librdkafka < 2.11 (src/rdkafka_feature.c) needs these versions inside the advertised ranges.
        for (key, version) in [
            (ApiKey::Produce, 3),
            (ApiKey::Fetch, 4),
            (ApiKey::Produce, 7),
            (ApiKey::Fetch, 10),
            (ApiKey::ApiVersions, 0),
            (ApiKey::FindCoordinator, 0),
            (ApiKey::JoinGroup, 0),
            (ApiKey::SyncGroup, 0),
            (ApiKey::Heartbeat, 0),
            (ApiKey::LeaveGroup, 0),
            (ApiKey::OffsetCommit, 2),
            (ApiKey::OffsetFetch, 1),
            (ApiKey::InitProducerId, 0),
        ] {
            let r = range(key).expect("served");
            assert!(r.min <= version && version <= r.max, "{key:?} v{version}");
        }
    }
}
