//! Consumer-group membership APIs over [`wharf_core::GroupCoordinator`]: FindCoordinator (this node, for
//! groups), JoinGroup, SyncGroup, Heartbeat, LeaveGroup, DescribeGroups, ListGroups, DeleteGroups.

use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, ResponseKind, SyncGroupRequest,
    SyncGroupResponse,
};
use kafka_protocol::protocol::{StrBytes, VersionRange};
use kafka_protocol::ResponseError;
use wharf_core::groups::JoinRequest;
use wharf_core::{GroupError, GroupState};

use super::{message, Broker, ClientInfo, Reply, NODE_ID, NO_ERROR};

/// Served FindCoordinator versions.
pub const FIND_COORDINATOR_VERSIONS: VersionRange = VersionRange { min: 0, max: 6 };
/// Served JoinGroup versions.
pub const JOIN_GROUP_VERSIONS: VersionRange = VersionRange { min: 0, max: 9 };
/// Served SyncGroup versions.
pub const SYNC_GROUP_VERSIONS: VersionRange = VersionRange { min: 0, max: 5 };
/// Served Heartbeat versions.
pub const HEARTBEAT_VERSIONS: VersionRange = VersionRange { min: 0, max: 4 };
/// Served LeaveGroup versions.
pub const LEAVE_GROUP_VERSIONS: VersionRange = VersionRange { min: 0, max: 5 };
/// Served DescribeGroups versions.
pub const DESCRIBE_GROUPS_VERSIONS: VersionRange = VersionRange { min: 0, max: 6 };
/// Served ListGroups versions.
pub const LIST_GROUPS_VERSIONS: VersionRange = VersionRange { min: 0, max: 5 };
/// Served DeleteGroups versions.
pub const DELETE_GROUPS_VERSIONS: VersionRange = VersionRange { min: 0, max: 2 };

/// Key type of FindCoordinator: a consumer group.
const KEY_TYPE_GROUP: i8 = 0;

/// The Kafka error for a group error.
pub fn group_error(e: &GroupError) -> ResponseError {
    match e {
        GroupError::UnknownMemberId => ResponseError::UnknownMemberId,
        GroupError::IllegalGeneration => ResponseError::IllegalGeneration,
        GroupError::RebalanceInProgress => ResponseError::RebalanceInProgress,
        GroupError::InconsistentGroupProtocol => ResponseError::InconsistentGroupProtocol,
        GroupError::InvalidSessionTimeout => ResponseError::InvalidSessionTimeout,
        GroupError::MemberIdRequired(_) => ResponseError::MemberIdRequired,
        GroupError::GroupIdNotFound => ResponseError::GroupIdNotFound,
        GroupError::NonEmptyGroup => ResponseError::NonEmptyGroup,
        GroupError::InvalidGroupId => ResponseError::InvalidGroupId,
        GroupError::FencedInstanceId => ResponseError::FencedInstanceId,
        GroupError::GroupMaxSizeReached => ResponseError::GroupMaxSizeReached,
        GroupError::GroupSubscribedToTopic => ResponseError::GroupSubscribedToTopic,
    }
}

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

/// Answers FindCoordinator: this node coordinates every group. Transactions are not built yet, so a
/// transaction coordinator is refused with an error that tells the client to stop trying.
pub fn find_coordinator(
    broker: &Arc<Broker>,
    request: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let answer = |key_type: i8| -> (i16, Option<String>) {
        if key_type == KEY_TYPE_GROUP {
            (NO_ERROR, None)
        } else {
            (
                ResponseError::TransactionalIdAuthorizationFailed.code(),
                Some("transactions are not supported by Wharf yet".into()),
            )
        }
    };
    let host = s(broker.node.host.clone());
    let port = i32::from(broker.node.port);
    if version >= 4 {
        let coordinators = request
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let (error, text) = answer(request.key_type);
                let c = Coordinator::default().with_key(key).with_error_code(error);
                if error == NO_ERROR {
                    c.with_node_id(BrokerId(NODE_ID))
                        .with_host(host.clone())
                        .with_port(port)
                } else {
                    c.with_node_id(BrokerId(-1))
                        .with_port(-1)
                        .with_error_message(text.and_then(message))
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let (error, text) = answer(request.key_type);
    let r = FindCoordinatorResponse::default().with_error_code(error);
    let r = if error == NO_ERROR {
        r.with_node_id(BrokerId(NODE_ID))
            .with_host(host)
            .with_port(port)
    } else {
        r.with_node_id(BrokerId(-1)).with_port(-1)
    };
    if version >= 1 {
        r.with_error_message(text.and_then(message))
    } else {
        r
    }
}

/// Answers JoinGroup once the join phase completes.
pub fn join_group(
    broker: &Arc<Broker>,
    request: JoinGroupRequest,
    version: i16,
    client: &ClientInfo,
) -> Reply {
    let join = JoinRequest {
        group_id: request.group_id.to_string(),
        member_id: request.member_id.to_string(),
        group_instance_id: request.group_instance_id.map(|i| i.to_string()),
        client_id: client.client_id.clone(),
        client_host: client.host.clone(),
        session_timeout_ms: u64::try_from(request.session_timeout_ms).unwrap_or(0),
        rebalance_timeout_ms: u64::try_from(if version >= 1 {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        })
        .unwrap_or(0),
        protocol_type: request.protocol_type.to_string(),
        protocols: request
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect(),
        require_known_member_id: version >= 4,
    };
    let groups = Arc::clone(&broker.groups);
    Reply::Later(Box::pin(async move {
        let response = match groups.join(join).await {
            Ok(j) => {
                let r = JoinGroupResponse::default()
                    .with_generation_id(j.generation_id)
                    .with_protocol_name(Some(s(j.protocol_name)))
                    .with_leader(s(j.leader))
                    .with_member_id(s(j.member_id))
                    .with_members(
                        j.members
                            .into_iter()
                            .map(|m| {
                                JoinGroupResponseMember::default()
                                    .with_member_id(s(m.member_id))
                                    .with_group_instance_id(if version >= 5 {
                                        m.group_instance_id.map(s)
                                    } else {
                                        None
                                    })
                                    .with_metadata(m.metadata)
                            })
                            .collect(),
                    );
                if version >= 7 {
                    r.with_protocol_type(Some(s(j.protocol_type)))
                } else {
                    r
                }
            }
            Err(e) => {
                let member_id = match &e {
                    GroupError::MemberIdRequired(id) => id.clone(),
                    _ => String::new(),
                };
                JoinGroupResponse::default()
                    .with_error_code(group_error(&e).code())
                    .with_generation_id(-1)
                    // Nullable only from v7.
                    .with_protocol_name(if version >= 7 {
                        None
                    } else {
                        Some(StrBytes::default())
                    })
                    .with_member_id(s(member_id))
            }
        };
        ResponseKind::JoinGroup(response)
    }))
}

/// Answers SyncGroup: the leader's call completes at once, the others' when the leader's arrives.
pub fn sync_group(broker: &Arc<Broker>, request: SyncGroupRequest, version: i16) -> Reply {
    let groups = Arc::clone(&broker.groups);
    Reply::Later(Box::pin(async move {
        let assignments = request
            .assignments
            .into_iter()
            .map(|a| (a.member_id.to_string(), a.assignment))
            .collect();
        let result = groups
            .sync(
                &request.group_id,
                request.generation_id,
                &request.member_id,
                assignments,
            )
            .await;
        let response = match result {
            Ok(r) => {
                let base = SyncGroupResponse::default().with_assignment(r.assignment);
                if version >= 5 {
                    base.with_protocol_type(Some(s(r.protocol_type)))
                        .with_protocol_name(Some(s(r.protocol_name)))
                } else {
                    base
                }
            }
            Err(e) => SyncGroupResponse::default()
                .with_error_code(group_error(&e).code())
                .with_assignment(Bytes::new()),
        };
        ResponseKind::SyncGroup(response)
    }))
}

/// Answers Heartbeat.
pub fn heartbeat(
    broker: &Arc<Broker>,
    request: HeartbeatRequest,
    _version: i16,
) -> HeartbeatResponse {
    let error =
        match broker
            .groups
            .heartbeat(&request.group_id, request.generation_id, &request.member_id)
        {
            Ok(()) => NO_ERROR,
            Err(e) => group_error(&e).code(),
        };
    HeartbeatResponse::default().with_error_code(error)
}

/// Answers LeaveGroup: one member (v0–2) or a batch named by member id or instance id (v3+).
pub fn leave_group(
    broker: &Arc<Broker>,
    request: LeaveGroupRequest,
    version: i16,
) -> LeaveGroupResponse {
    let code = |r: Result<(), GroupError>| match r {
        Ok(()) => 0,
        Err(e) => group_error(&e).code(),
    };
    if version < 3 {
        let error = code(
            broker
                .groups
                .leave(&request.group_id, &request.member_id, None),
        );
        return LeaveGroupResponse::default().with_error_code(error);
    }
    let members = request
        .members
        .into_iter()
        .map(|m| {
            let error = code(broker.groups.leave(
                &request.group_id,
                &m.member_id,
                m.group_instance_id.as_deref(),
            ));
            MemberResponse::default()
                .with_member_id(m.member_id)
                .with_group_instance_id(m.group_instance_id)
                .with_error_code(error)
        })
        .collect();
    LeaveGroupResponse::default().with_members(members)
}

/// Answers DescribeGroups. A group known only by its committed offsets is `Empty`; an unknown one is `Dead`
/// (v6 adds GROUP_ID_NOT_FOUND for it).
pub fn describe_groups(
    broker: &Arc<Broker>,
    request: DescribeGroupsRequest,
    version: i16,
) -> DescribeGroupsResponse {
    let groups = request
        .groups
        .into_iter()
        .map(|group_id| {
            let base = DescribedGroup::default().with_group_id(group_id.clone());
            match broker.groups.describe(&group_id) {
                Some(d) => base
                    .with_group_state(s(d.state.name()))
                    .with_protocol_type(s(d.protocol_type))
                    .with_protocol_data(s(d.protocol_name))
                    .with_members(
                        d.members
                            .into_iter()
                            .map(|m| {
                                DescribedGroupMember::default()
                                    .with_member_id(s(m.member_id))
                                    .with_group_instance_id(if version >= 4 {
                                        m.group_instance_id.map(s)
                                    } else {
                                        None
                                    })
                                    .with_client_id(s(m.client_id))
                                    .with_client_host(s(m.client_host))
                                    .with_member_metadata(m.metadata)
                                    .with_member_assignment(m.assignment)
                            })
                            .collect(),
                    ),
                None if broker.offsets.has_group(&group_id) => base
                    .with_group_state(s(GroupState::Empty.name()))
                    .with_protocol_type(s("consumer")),
                None if version >= 6 => base
                    .with_error_code(ResponseError::GroupIdNotFound.code())
                    .with_error_message(message(format!(
                        "group '{}' does not exist",
                        group_id.as_str()
                    )))
                    .with_group_state(s(GroupState::Dead.name())),
                None => base.with_group_state(s(GroupState::Dead.name())),
            }
        })
        .collect();
    DescribeGroupsResponse::default().with_groups(groups)
}

/// Answers ListGroups (with the state filter of v4+ and the type filter of v5).
pub fn list_groups(
    broker: &Arc<Broker>,
    request: ListGroupsRequest,
    version: i16,
) -> ListGroupsResponse {
    let mut all: std::collections::BTreeMap<String, (String, GroupState)> = broker
        .offsets
        .groups()
        .into_iter()
        .map(|g| (g, ("consumer".to_string(), GroupState::Empty)))
        .collect();
    for (id, protocol_type, state) in broker.groups.list() {
        let protocol_type = if protocol_type.is_empty() {
            "consumer".to_string()
        } else {
            protocol_type
        };
        all.insert(id, (protocol_type, state));
    }
    let states: Vec<String> = request
        .states_filter
        .iter()
        .map(|f| f.to_lowercase())
        .collect();
    let types: Vec<String> = request
        .types_filter
        .iter()
        .map(|f| f.to_lowercase())
        .collect();
    let groups = all
        .into_iter()
        .filter(|(_, (_, state))| {
            states.is_empty() || states.contains(&state.name().to_lowercase())
        })
        .filter(|_| types.is_empty() || types.iter().any(|t| t == "classic"))
        .map(|(id, (protocol_type, state))| {
            let g = ListedGroup::default()
                .with_group_id(GroupId(s(id)))
                .with_protocol_type(s(protocol_type));
            let g = if version >= 4 {
                g.with_group_state(s(state.name()))
            } else {
                g
            };
            if version >= 5 {
                g.with_group_type(s("classic"))
            } else {
                g
            }
        })
        .collect();
    ListGroupsResponse::default().with_groups(groups)
}

/// Answers DeleteGroups: only groups without members; their committed offsets go too.
pub fn delete_groups(broker: &Arc<Broker>, request: DeleteGroupsRequest, _version: i16) -> Reply {
    let broker = Arc::clone(broker);
    Reply::Later(Box::pin(async move {
        let mut results = Vec::with_capacity(request.groups_names.len());
        for group_id in request.groups_names {
            let known_state = broker.groups.describe(&group_id).is_some();
            let has_offsets = broker.offsets.has_group(&group_id);
            let error = if broker.groups.has_members(&group_id) {
                ResponseError::NonEmptyGroup.code()
            } else if !known_state && !has_offsets {
                ResponseError::GroupIdNotFound.code()
            } else {
                let _ = broker.groups.delete(&group_id);
                match broker.offsets.delete_group(&group_id).await {
                    Ok(()) => NO_ERROR,
                    Err(e) => {
                        tracing::error!(group = %group_id.as_str(), "cannot delete group offsets: {e}");
                        ResponseError::KafkaStorageError.code()
                    }
                }
            };
            results.push(
                DeletableGroupResult::default()
                    .with_group_id(group_id)
                    .with_error_code(error),
            );
        }
        ResponseKind::DeleteGroups(DeleteGroupsResponse::default().with_results(results))
    }))
}
