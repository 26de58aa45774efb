//! Every served API at every served version: a request encoded by the codec is parsed, dispatched against a
//! real topic registry, and its response encodes and decodes at that version. The codec refuses to encode a
//! field the version does not have, so this catches handlers that fill version-specific fields blindly.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use wharf_core::{TopicConfig, TopicDefaults, TopicRegistry};
use wharf_kafka::codec::{encode_response, parse_request};
use wharf_kafka::handlers::{dispatch, Broker, NodeInfo, Reply};
use wharf_kafka::{apis, KafkaConfig};

#[global_allocator]
static ALLOC: wharf_alloc::GuardedAlloc = wharf_alloc::GuardedAlloc;

fn broker(dir: &std::path::Path) -> Arc<Broker> {
    let logs = Arc::new(wharf_log::LogManager::open(dir.join("logs"), Default::default()).unwrap());
    let offsets = Arc::new(wharf_core::OffsetStore::open(&logs, Default::default()).unwrap());
    let topics = Arc::new(
        TopicRegistry::open(
            logs,
            dir.join("topics"),
            TopicDefaults::default(),
            wharf_kafka::batch::producer_fields,
        )
        .unwrap(),
    );
    topics.create("t", Some(2), TopicConfig::default()).unwrap();
    let groups = wharf_core::GroupCoordinator::new(wharf_core::GroupConfig {
        initial_rebalance_delay_ms: 0,
        ..Default::default()
    });
    Arc::new(Broker {
        topics,
        groups,
        offsets,
        producer_ids: Arc::new(wharf_core::ProducerIds::open(dir.join("producer_ids")).unwrap()),
        config: KafkaConfig::default(),
        node: NodeInfo {
            host: "127.0.0.1".into(),
            port: 9092,
            cluster_id: "AAAAAAAAAAAAAAAAAAAAAA".into(),
        },
    })
}

fn name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.into()))
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.into())
}

/// A representative request of `key` at `version`, encoded with its header.
/// `t` is the id of topic "t", for versions that name topics by id.
fn request(key: ApiKey, version: i16, t: uuid::Uuid) -> BytesMut {
    let body: RequestKind = match key {
        ApiKey::ApiVersions => RequestKind::ApiVersions(if version >= 3 {
            ApiVersionsRequest::default()
                .with_client_software_name(s("test"))
                .with_client_software_version(s("1"))
        } else {
            ApiVersionsRequest::default()
        }),
        ApiKey::Metadata => {
            let topic =
                metadata_request::MetadataRequestTopic::default().with_name(Some(name("t")));
            let missing = metadata_request::MetadataRequestTopic::default()
                .with_name(Some(name("auto-made")));
            RequestKind::Metadata(
                MetadataRequest::default()
                    .with_topics(Some(vec![topic, missing]))
                    .with_allow_auto_topic_creation(true),
            )
        }
        ApiKey::Produce => {
            let records = one_batch();
            let part = produce_request::PartitionProduceData::default()
                .with_index(0)
                .with_records(Some(records));
            let topic =
                produce_request::TopicProduceData::default().with_partition_data(vec![part]);
            let topic = if version >= 13 {
                topic.with_topic_id(t)
            } else {
                topic.with_name(name("t"))
            };
            RequestKind::Produce(
                ProduceRequest::default()
                    .with_acks(1)
                    .with_timeout_ms(1000)
                    .with_topic_data(vec![topic]),
            )
        }
        ApiKey::Fetch => {
            let part = fetch_request::FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(0)
                .with_partition_max_bytes(1 << 20);
            let missing = fetch_request::FetchPartition::default()
                .with_partition(7)
                .with_partition_max_bytes(1 << 20);
            let topic = fetch_request::FetchTopic::default().with_partitions(vec![part, missing]);
            let topic = if version >= 13 {
                topic.with_topic_id(t)
            } else {
                topic.with_topic(name("t"))
            };
            RequestKind::Fetch(
                FetchRequest::default()
                    .with_max_wait_ms(0)
                    .with_max_bytes(1 << 20)
                    .with_topics(vec![topic]),
            )
        }
        ApiKey::ListOffsets => {
            let parts = [-1i64, -2, 0, -3, -4]
                .iter()
                .map(|&ts| {
                    list_offsets_request::ListOffsetsPartition::default()
                        .with_partition_index(0)
                        .with_timestamp(ts)
                })
                .collect();
            let topic = list_offsets_request::ListOffsetsTopic::default()
                .with_name(name("t"))
                .with_partitions(parts);
            RequestKind::ListOffsets(ListOffsetsRequest::default().with_topics(vec![topic]))
        }
        ApiKey::CreateTopics => {
            let config = create_topics_request::CreatableTopicConfig::default()
                .with_name(s("retention.ms"))
                .with_value(Some(s("1000")));
            let ok = create_topics_request::CreatableTopic::default()
                .with_name(name(&format!("new-{version}")))
                .with_num_partitions(3)
                .with_replication_factor(1)
                .with_configs(vec![config]);
            let bad = create_topics_request::CreatableTopic::default()
                .with_name(name("bad name"))
                .with_num_partitions(1)
                .with_replication_factor(1);
            RequestKind::CreateTopics(CreateTopicsRequest::default().with_topics(vec![ok, bad]))
        }
        ApiKey::DeleteTopics => RequestKind::DeleteTopics(if version >= 6 {
            DeleteTopicsRequest::default()
                .with_topics(vec![delete_topics_request::DeleteTopicState::default()
                    .with_name(Some(name("nope")))])
        } else {
            DeleteTopicsRequest::default().with_topic_names(vec![name("nope")])
        }),
        ApiKey::CreatePartitions => {
            RequestKind::CreatePartitions(CreatePartitionsRequest::default().with_topics(vec![
                create_partitions_request::CreatePartitionsTopic::default()
                    .with_name(name("t"))
                    .with_count(1),
            ]))
        }
        ApiKey::DeleteRecords => {
            RequestKind::DeleteRecords(DeleteRecordsRequest::default().with_topics(vec![
                delete_records_request::DeleteRecordsTopic::default()
                    .with_name(name("t"))
                    .with_partitions(vec![
                        delete_records_request::DeleteRecordsPartition::default()
                            .with_partition_index(1)
                            .with_offset(0),
                    ]),
            ]))
        }
        ApiKey::OffsetForLeaderEpoch => RequestKind::OffsetForLeaderEpoch(
            OffsetForLeaderEpochRequest::default().with_topics(vec![
                offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                    .with_topic(name("t"))
                    .with_partitions(vec![
                        offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                            .with_partition(0)
                            .with_leader_epoch(0),
                    ]),
            ]),
        ),
        ApiKey::DescribeConfigs => {
            RequestKind::DescribeConfigs(DescribeConfigsRequest::default().with_resources(vec![
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s("t")),
                describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(4)
                    .with_resource_name(s("0")),
            ]))
        }
        ApiKey::AlterConfigs => {
            RequestKind::AlterConfigs(AlterConfigsRequest::default().with_resources(vec![
                alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s("t"))
                    .with_configs(vec![alter_configs_request::AlterableConfig::default()
                        .with_name(s("retention.ms"))
                        .with_value(Some(s("5000")))]),
            ]))
        }
        ApiKey::IncrementalAlterConfigs => RequestKind::IncrementalAlterConfigs(
            IncrementalAlterConfigsRequest::default().with_resources(vec![
                incremental_alter_configs_request::AlterConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(s("t"))
                    .with_configs(vec![
                        incremental_alter_configs_request::AlterableConfig::default()
                            .with_name(s("segment.bytes"))
                            .with_config_operation(0)
                            .with_value(Some(s("1048576"))),
                    ]),
            ]),
        ),
        ApiKey::DescribeCluster => RequestKind::DescribeCluster(DescribeClusterRequest::default()),
        ApiKey::FindCoordinator => RequestKind::FindCoordinator(if version >= 4 {
            FindCoordinatorRequest::default().with_coordinator_keys(vec![s("g")])
        } else {
            FindCoordinatorRequest::default().with_key(s("g"))
        }),
        ApiKey::JoinGroup => RequestKind::JoinGroup(
            JoinGroupRequest::default()
                .with_group_id(GroupId(s(&format!("join-{version}"))))
                .with_session_timeout_ms(10_000)
                .with_rebalance_timeout_ms(if version >= 1 { 10_000 } else { -1 })
                .with_protocol_type(s("consumer"))
                .with_protocols(vec![join_group_request::JoinGroupRequestProtocol::default(
                )
                .with_name(s("range"))
                .with_metadata(bytes::Bytes::from_static(b"meta"))]),
        ),
        ApiKey::SyncGroup => RequestKind::SyncGroup(
            SyncGroupRequest::default()
                .with_group_id(GroupId(s("x")))
                .with_generation_id(1)
                .with_member_id(s("m")),
        ),
        ApiKey::Heartbeat => RequestKind::Heartbeat(
            HeartbeatRequest::default()
                .with_group_id(GroupId(s("x")))
                .with_generation_id(1)
                .with_member_id(s("m")),
        ),
        ApiKey::LeaveGroup => RequestKind::LeaveGroup(if version >= 3 {
            LeaveGroupRequest::default()
                .with_group_id(GroupId(s("x")))
                .with_members(vec![
                    leave_group_request::MemberIdentity::default().with_member_id(s("m"))
                ])
        } else {
            LeaveGroupRequest::default()
                .with_group_id(GroupId(s("x")))
                .with_member_id(s("m"))
        }),
        ApiKey::OffsetCommit => RequestKind::OffsetCommit(
            OffsetCommitRequest::default()
                .with_group_id(GroupId(s("og")))
                .with_generation_id_or_member_epoch(-1)
                .with_topics(vec![
                    offset_commit_request::OffsetCommitRequestTopic::default()
                        .with_name(name("t"))
                        .with_partitions(vec![
                            offset_commit_request::OffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(5)
                                .with_committed_metadata(Some(s("m"))),
                            offset_commit_request::OffsetCommitRequestPartition::default()
                                .with_partition_index(9)
                                .with_committed_offset(1),
                        ]),
                ]),
        ),
        ApiKey::OffsetFetch => RequestKind::OffsetFetch(if version >= 8 {
            OffsetFetchRequest::default().with_groups(vec![
                offset_fetch_request::OffsetFetchRequestGroup::default()
                    .with_group_id(GroupId(s("og")))
                    .with_topics(Some(vec![
                        offset_fetch_request::OffsetFetchRequestTopics::default()
                            .with_name(name("t"))
                            .with_partition_indexes(vec![0, 1]),
                    ])),
            ])
        } else {
            OffsetFetchRequest::default()
                .with_group_id(GroupId(s("og")))
                .with_topics(Some(vec![
                    offset_fetch_request::OffsetFetchRequestTopic::default()
                        .with_name(name("t"))
                        .with_partition_indexes(vec![0, 1]),
                ]))
        }),
        ApiKey::DescribeGroups => {
            RequestKind::DescribeGroups(DescribeGroupsRequest::default().with_groups(vec![
                GroupId(s("og")),
                GroupId(s("join-3")),
                GroupId(s("nope")),
            ]))
        }
        ApiKey::ListGroups => RequestKind::ListGroups(ListGroupsRequest::default()),
        ApiKey::DeleteGroups => RequestKind::DeleteGroups(
            DeleteGroupsRequest::default().with_groups_names(vec![GroupId(s("nope"))]),
        ),
        ApiKey::OffsetDelete => RequestKind::OffsetDelete(
            OffsetDeleteRequest::default()
                .with_group_id(GroupId(s("og")))
                .with_topics(vec![
                    offset_delete_request::OffsetDeleteRequestTopic::default()
                        .with_name(name("t"))
                        .with_partitions(vec![
                            offset_delete_request::OffsetDeleteRequestPartition::default()
                                .with_partition_index(0),
                        ]),
                ]),
        ),
        ApiKey::InitProducerId => RequestKind::InitProducerId(
            InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(60_000),
        ),
        ApiKey::DescribeProducers => {
            RequestKind::DescribeProducers(DescribeProducersRequest::default().with_topics(vec![
                describe_producers_request::TopicRequest::default()
                    .with_name(name("t"))
                    .with_partition_indexes(vec![0, 5]),
            ]))
        }
        other => panic!("no sample request for {other:?}"),
    };
    let header = RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(s("every-version")));
    let mut out = BytesMut::new();
    header
        .encode(&mut out, key.request_header_version(version))
        .unwrap();
    body.encode(&mut out, version)
        .unwrap_or_else(|e| panic!("sample {key:?} v{version} does not encode: {e}"));
    out
}

/// One valid, uncompressed record batch of one record.
fn one_batch() -> bytes::Bytes {
    let mut record = BytesMut::new();
    // attributes, timestamp delta 0, offset delta 0, key -1 (null), value length 1 "x", 0 headers (zigzag varints)
    record.put_slice(&[0, 0, 0, 1, 2, b'x', 0]);
    let mut b = BytesMut::new();
    b.put_i64(0);
    b.put_i32(0); // length, patched below
    b.put_i32(-1);
    b.put_i8(2);
    b.put_u32(0); // crc, patched below
    b.put_i16(0);
    b.put_i32(0);
    b.put_i64(1000);
    b.put_i64(1000);
    b.put_i64(-1);
    b.put_i16(-1);
    b.put_i32(-1);
    b.put_i32(1);
    b.put_u8((record.len() as u8) << 1);
    b.put_slice(&record);
    let len = (b.len() - 12) as i32;
    b[8..12].copy_from_slice(&len.to_be_bytes());
    let crc = crc32c::crc32c(&b[21..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    b.freeze()
}

#[tokio::test]
async fn every_served_version_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let broker = broker(dir.path());
    let t_id = uuid::Uuid::from_bytes(broker.topics.get("t").unwrap().id());
    let mut checked = 0;
    for (key, range) in apis::supported() {
        for version in range.min..=range.max {
            let frame = request(key, version, t_id).freeze();
            let mut req =
                parse_request(frame).unwrap_or_else(|e| panic!("{key:?} v{version}: {e}"));
            let reply = dispatch(&broker, &mut req, "/127.0.0.1")
                .unwrap_or_else(|e| panic!("{key:?} v{version}: {e}"));
            let body = match reply {
                Reply::Now(b) => b,
                Reply::Later(f) => f.await,
                Reply::None => continue,
            };
            let mut out = BytesMut::new();
            encode_response(&mut out, key, version, 7, &body)
                .unwrap_or_else(|e| panic!("{key:?} v{version} response does not encode: {e:#}"));
            // Decode it back as a client would.
            let mut bytes = out.freeze().slice(4..);
            let header =
                ResponseHeader::decode_header(&mut bytes, key.response_header_version(version));
            assert_eq!(header, 7, "{key:?} v{version}");
            ResponseKind::decode(key, &mut bytes, version)
                .unwrap_or_else(|e| panic!("{key:?} v{version} response does not decode: {e:#}"));
            assert!(bytes.is_empty(), "{key:?} v{version}: trailing bytes");
            checked += 1;
        }
    }
    assert!(checked > 60, "only {checked} API versions checked");
}

trait DecodeHeader {
    fn decode_header(bytes: &mut bytes::Bytes, version: i16) -> i32;
}

impl DecodeHeader for ResponseHeader {
    fn decode_header(bytes: &mut bytes::Bytes, version: i16) -> i32 {
        use kafka_protocol::protocol::Decodable;
        ResponseHeader::decode(bytes, version)
            .unwrap()
            .correlation_id
    }
}
