//! Consumer groups, the classic protocol: members join, one of them (the leader) assigns partitions, everyone
//! syncs and heartbeats; a join, leave or session timeout starts a new generation. The broker never looks inside
//! protocol metadata or assignments; it only picks the protocol every member supports.
//!
//! States as Kafka names them: `Empty` (no members, maybe committed offsets), `PreparingRebalance` (waiting for
//! members to (re)join, until all known members have or the rebalance timeout passes), `CompletingRebalance`
//! (joined; waiting for the leader's assignment), `Stable`, and `Dead` (deleted).
//!
//! Joins and syncs that must wait are parked on oneshot channels under the group's lock and completed when the
//! phase completes; a ticker task expires sessions and ends join phases at their deadline. Static members
//! (`group.instance.id`) keep their assignment across restarts: rejoining with a new member id replaces the old
//! id without a rebalance when the group is stable.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::info;

/// Limits and timers of the group coordinator, named after Kafka's broker settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupConfig {
    /// Delay of the first rebalance of an empty group, so that members starting together land in one
    /// generation (`group.initial.rebalance.delay.ms`).
    pub initial_rebalance_delay_ms: u64,
    /// Smallest session timeout a member may ask for (`group.min.session.timeout.ms`).
    pub min_session_timeout_ms: u64,
    /// Largest session timeout a member may ask for (`group.max.session.timeout.ms`).
    pub max_session_timeout_ms: u64,
    /// Most members in one group (`group.max.size`).
    pub max_members: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            initial_rebalance_delay_ms: 3000,
            min_session_timeout_ms: 6000,
            max_session_timeout_ms: 1_800_000,
            max_members: 1000,
        }
    }
}

/// Why a group request is refused; each is one Kafka error code.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GroupError {
    /// The member id is not (or no longer) in the group.
    #[error("unknown member id")]
    UnknownMemberId,
    /// The request is from another generation.
    #[error("illegal generation")]
    IllegalGeneration,
    /// A rebalance is under way; the member must rejoin.
    #[error("rebalance in progress")]
    RebalanceInProgress,
    /// The member's protocol type or protocols do not match the group's.
    #[error("inconsistent group protocol")]
    InconsistentGroupProtocol,
    /// The session timeout is outside the broker's range.
    #[error("invalid session timeout")]
    InvalidSessionTimeout,
    /// First join of a member (JoinGroup v4+): rejoin with this id.
    #[error("member id required")]
    MemberIdRequired(String),
    /// The group does not exist.
    #[error("group id not found")]
    GroupIdNotFound,
    /// The group has members, so it cannot be deleted.
    #[error("the group is not empty")]
    NonEmptyGroup,
    /// The group id is empty.
    #[error("invalid group id")]
    InvalidGroupId,
    /// A static member was replaced by a newer instance with the same `group.instance.id`.
    #[error("fenced instance id")]
    FencedInstanceId,
    /// The group has `group.max.size` members already.
    #[error("group max size reached")]
    GroupMaxSizeReached,
    /// The group's members subscribe to the topic whose offsets are to be deleted.
    #[error("the group is subscribed to the topic")]
    GroupSubscribedToTopic,
}

/// The state of a group, as DescribeGroups and ListGroups report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GroupState {
    /// No members.
    Empty,
    /// Waiting for members to join.
    PreparingRebalance,
    /// Waiting for the leader's assignment.
    CompletingRebalance,
    /// Every member has its assignment.
    Stable,
    /// Deleted.
    Dead,
}

impl GroupState {
    /// Kafka's name of the state.
    pub fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
            GroupState::Dead => "Dead",
        }
    }
}

/// A JoinGroup request.
#[derive(Clone, Debug)]
pub struct JoinRequest {
    /// The group.
    pub group_id: String,
    /// The member id, empty on a first join.
    pub member_id: String,
    /// `group.instance.id` of a static member.
    pub group_instance_id: Option<String>,
    /// The client's id (for DescribeGroups and generated member ids).
    pub client_id: String,
    /// The client's host (for DescribeGroups).
    pub client_host: String,
    /// Session timeout.
    pub session_timeout_ms: u64,
    /// Rebalance timeout (JoinGroup v1+; the session timeout before).
    pub rebalance_timeout_ms: u64,
    /// Protocol type, e.g. `consumer`.
    pub protocol_type: String,
    /// Supported protocols in preference order, with their metadata.
    pub protocols: Vec<(String, Bytes)>,
    /// JoinGroup v4+: a first join gets MEMBER_ID_REQUIRED and an id to rejoin with.
    pub require_known_member_id: bool,
}

/// One member as the leader sees it in its JoinGroup response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinedMember {
    /// Member id.
    pub member_id: String,
    /// Static instance id.
    pub group_instance_id: Option<String>,
    /// The member's metadata for the chosen protocol.
    pub metadata: Bytes,
}

/// A JoinGroup answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinResponse {
    /// The new generation.
    pub generation_id: i32,
    /// The group's protocol type.
    pub protocol_type: String,
    /// The chosen protocol.
    pub protocol_name: String,
    /// The leader's member id.
    pub leader: String,
    /// This member's id.
    pub member_id: String,
    /// Every member, for the leader only; empty for the others.
    pub members: Vec<JoinedMember>,
}

/// A SyncGroup answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncResponse {
    /// The group's protocol type.
    pub protocol_type: String,
    /// The chosen protocol.
    pub protocol_name: String,
    /// This member's assignment.
    pub assignment: Bytes,
}

/// One member in a group description.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberDescription {
    /// Member id.
    pub member_id: String,
    /// Static instance id.
    pub group_instance_id: Option<String>,
    /// Client id.
    pub client_id: String,
    /// Client host.
    pub client_host: String,
    /// Metadata for the chosen protocol.
    pub metadata: Bytes,
    /// Current assignment.
    pub assignment: Bytes,
}

/// A group as DescribeGroups shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupDescription {
    /// State.
    pub state: GroupState,
    /// Protocol type (empty when no member ever joined).
    pub protocol_type: String,
    /// Chosen protocol (empty unless stable or completing).
    pub protocol_name: String,
    /// Members.
    pub members: Vec<MemberDescription>,
}

struct Member {
    instance_id: Option<String>,
    client_id: String,
    client_host: String,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocols: Vec<(String, Bytes)>,
    last_seen: Instant,
    /// Joined in the current join phase.
    joined: bool,
    assignment: Bytes,
}

type JoinReply = oneshot::Sender<Result<JoinResponse, GroupError>>;
type SyncReply = oneshot::Sender<Result<SyncResponse, GroupError>>;

struct Group {
    state: GroupState,
    generation: i32,
    protocol_type: String,
    protocol_name: String,
    leader: String,
    members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, not yet joined.
    pending_ids: HashSet<String>,
    join_waiters: Vec<(String, JoinReply)>,
    sync_waiters: Vec<(String, SyncReply)>,
    /// When the current join phase ends at the latest.
    join_deadline: Option<Instant>,
    /// The first join phase of an empty group may not end before this (initial rebalance delay).
    join_not_before: Option<Instant>,
}

impl Group {
    fn new() -> Group {
        Group {
            state: GroupState::Empty,
            generation: 0,
            protocol_type: String::new(),
            protocol_name: String::new(),
            leader: String::new(),
            members: BTreeMap::new(),
            pending_ids: HashSet::new(),
            join_waiters: Vec::new(),
            sync_waiters: Vec::new(),
            join_deadline: None,
            join_not_before: None,
        }
    }

    fn instance_owner(&self, instance_id: &str) -> Option<String> {
        self.members
            .iter()
            .find(|(_, m)| m.instance_id.as_deref() == Some(instance_id))
            .map(|(id, _)| id.clone())
    }

    /// Starts (or restarts) a join phase: every member must rejoin.
    fn prepare_rebalance(&mut self, now: Instant, initial_delay: Duration) {
        let was_empty = self.state == GroupState::Empty;
        for (_, waiter) in self.sync_waiters.drain(..) {
            let _ = waiter.send(Err(GroupError::RebalanceInProgress));
        }
        if self.state != GroupState::PreparingRebalance {
            for m in self.members.values_mut() {
                m.joined = false;
            }
        }
        self.state = GroupState::PreparingRebalance;
        let timeout = self
            .members
            .values()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(Duration::ZERO);
        let deadline = now + timeout;
        self.join_deadline = Some(self.join_deadline.map_or(deadline, |d| d.max(deadline)));
        if was_empty && !initial_delay.is_zero() {
            self.join_not_before = Some(now + initial_delay);
        }
    }

    /// Ends the join phase if every member has joined (and the initial delay passed) or the deadline passed.
    fn maybe_complete_join(&mut self, now: Instant, group_id: &str) {
        if self.state != GroupState::PreparingRebalance {
            return;
        }
        let delayed = self.join_not_before.is_some_and(|t| now < t);
        let all_joined = !self.members.is_empty() && self.members.values().all(|m| m.joined);
        let expired = self.join_deadline.is_some_and(|d| now >= d);
        if !delayed && (all_joined || expired) {
            self.complete_join(group_id);
        }
    }

    fn complete_join(&mut self, group_id: &str) {
        // Members that did not rejoin in time leave the group.
        let gone: Vec<String> = self
            .members
            .iter()
            .filter(|(_, m)| !m.joined)
            .map(|(id, _)| id.clone())
            .collect();
        for id in &gone {
            self.members.remove(id);
        }
        self.join_deadline = None;
        self.join_not_before = None;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.generation += 1;
            self.protocol_name.clear();
            self.leader.clear();
            for (_, w) in self.join_waiters.drain(..) {
                let _ = w.send(Err(GroupError::UnknownMemberId));
            }
            return;
        }
        let Some(protocol) = self.choose_protocol() else {
            // Cannot happen: joins are refused unless they share a protocol with every member.
            for (_, w) in self.join_waiters.drain(..) {
                let _ = w.send(Err(GroupError::InconsistentGroupProtocol));
            }
            return;
        };
        self.protocol_name = protocol;
        self.generation += 1;
        if !self.members.contains_key(&self.leader) {
            self.leader = self
                .join_waiters
                .first()
                .map(|(id, _)| id.clone())
                .or_else(|| self.members.keys().next().cloned())
                .unwrap_or_default();
        }
        self.state = GroupState::CompletingRebalance;
        for m in self.members.values_mut() {
            m.assignment = Bytes::new();
        }
        let members: Vec<JoinedMember> = self
            .members
            .iter()
            .map(|(id, m)| JoinedMember {
                member_id: id.clone(),
                group_instance_id: m.instance_id.clone(),
                metadata: m
                    .protocols
                    .iter()
                    .find(|(name, _)| *name == self.protocol_name)
                    .map(|(_, meta)| meta.clone())
                    .unwrap_or_default(),
            })
            .collect();
        info!(
            group = group_id,
            generation = self.generation,
            members = members.len(),
            protocol = %self.protocol_name,
            "group rebalanced"
        );
        for (id, w) in self.join_waiters.drain(..) {
            let _ = w.send(Ok(JoinResponse {
                generation_id: self.generation,
                protocol_type: self.protocol_type.clone(),
                protocol_name: self.protocol_name.clone(),
                leader: self.leader.clone(),
                member_id: id.clone(),
                members: if id == self.leader {
                    members.clone()
                } else {
                    Vec::new()
                },
            }));
        }
        let now = Instant::now();
        for m in self.members.values_mut() {
            m.joined = false;
            m.last_seen = now;
        }
    }

    /// The protocol every member supports that gets most first-choice votes (Kafka's rule).
    fn choose_protocol(&self) -> Option<String> {
        let mut candidates: Vec<&String> = self
            .members
            .values()
            .next()?
            .protocols
            .iter()
            .map(|(n, _)| n)
            .collect();
        candidates.retain(|c| {
            self.members
                .values()
                .all(|m| m.protocols.iter().any(|(n, _)| n == *c))
        });
        let mut votes: HashMap<&String, usize> = HashMap::new();
        for m in self.members.values() {
            if let Some((name, _)) = m.protocols.iter().find(|(n, _)| candidates.contains(&n)) {
                *votes.entry(name).or_default() += 1;
            }
        }
        candidates
            .iter()
            .max_by_key(|c| {
                (
                    votes.get(*c).copied().unwrap_or(0),
                    std::cmp::Reverse(candidates.iter().position(|x| x == *c)),
                )
            })
            .map(|c| (*c).clone())
    }

    fn remove_member(&mut self, member_id: &str, now: Instant, initial_delay: Duration) {
        if self.members.remove(member_id).is_none() {
            return;
        }
        self.join_waiters.retain(|(id, _)| id != member_id);
        self.sync_waiters.retain(|(id, _)| id != member_id);
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                if self.members.is_empty() {
                    self.state = GroupState::Empty;
                    self.generation += 1;
                    self.leader.clear();
                    self.protocol_name.clear();
                } else {
                    self.prepare_rebalance(now, initial_delay);
                }
            }
            GroupState::PreparingRebalance | GroupState::Empty | GroupState::Dead => {}
        }
    }
}

/// The group coordinator of this node: every group's membership state. Committed offsets live in
/// [`crate::offsets::OffsetStore`].
pub struct GroupCoordinator {
    groups: Mutex<HashMap<String, Group>>,
    config: GroupConfig,
}

impl std::fmt::Debug for GroupCoordinator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCoordinator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// How often sessions and join deadlines are checked.
const TICK: Duration = Duration::from_millis(100);

impl GroupCoordinator {
    /// A coordinator with no groups. Call [`GroupCoordinator::run_timers`] on a task to expire sessions.
    pub fn new(config: GroupConfig) -> Arc<GroupCoordinator> {
        Arc::new(GroupCoordinator {
            groups: Mutex::new(HashMap::new()),
            config,
        })
    }

    fn initial_delay(&self) -> Duration {
        Duration::from_millis(self.config.initial_rebalance_delay_ms)
    }

    /// Expires sessions and ends join phases at their deadlines, until the coordinator is dropped elsewhere
    /// (the task holds only a weak reference).
    pub async fn run_timers(this: std::sync::Weak<GroupCoordinator>) {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tick.tick().await;
            let Some(me) = this.upgrade() else { return };
            me.tick(Instant::now());
        }
    }

    fn tick(&self, now: Instant) {
        let delay = self.initial_delay();
        let mut groups = self.groups.lock();
        for (group_id, g) in groups.iter_mut() {
            let waiting: HashSet<String> =
                g.join_waiters.iter().map(|(id, _)| id.clone()).collect();
            let expired: Vec<String> = g
                .members
                .iter()
                .filter(|(id, m)| {
                    !waiting.contains(*id) && now.duration_since(m.last_seen) > m.session_timeout
                })
                .map(|(id, _)| id.clone())
                .collect();
            for id in expired {
                info!(group = %group_id, member = %id, "member session expired");
                g.remove_member(&id, now, delay);
            }
            g.maybe_complete_join(now, group_id);
        }
    }

    /// JoinGroup: returns when the join phase completes.
    pub async fn join(&self, req: JoinRequest) -> Result<JoinResponse, GroupError> {
        let rx = {
            let now = Instant::now();
            let mut groups = self.groups.lock();
            if req.group_id.is_empty() {
                return Err(GroupError::InvalidGroupId);
            }
            if req.session_timeout_ms < self.config.min_session_timeout_ms
                || req.session_timeout_ms > self.config.max_session_timeout_ms
            {
                return Err(GroupError::InvalidSessionTimeout);
            }
            let g = groups
                .entry(req.group_id.clone())
                .or_insert_with(Group::new);
            if g.state == GroupState::Dead {
                *g = Group::new();
            }
            if req.protocol_type.is_empty() || req.protocols.is_empty() {
                return Err(GroupError::InconsistentGroupProtocol);
            }
            if !g.members.is_empty() {
                let compatible = req.protocol_type == g.protocol_type
                    && req.protocols.iter().any(|(name, _)| {
                        g.members
                            .iter()
                            .filter(|(id, _)| **id != req.member_id)
                            .all(|(_, m)| m.protocols.iter().any(|(n, _)| n == name))
                    });
                if !compatible {
                    return Err(GroupError::InconsistentGroupProtocol);
                }
            }
            let mut member_id = req.member_id.clone();
            let static_owner = req
                .group_instance_id
                .as_deref()
                .and_then(|i| g.instance_owner(i));
            if member_id.is_empty() {
                member_id = format!("{}-{}", req.client_id, random_suffix());
                if let Some(old) = static_owner {
                    // A restarted static member takes over its old identity without a rebalance when the group
                    // is stable and its protocols did not change.
                    if let Some(prev) = g.members.remove(&old) {
                        let same = prev.protocols == req.protocols;
                        if g.leader == old {
                            g.leader = member_id.clone();
                        }
                        let assignment = prev.assignment.clone();
                        g.members
                            .insert(member_id.clone(), member_from(&req, now, assignment));
                        if same && g.state == GroupState::Stable {
                            return Ok(JoinResponse {
                                generation_id: g.generation,
                                protocol_type: g.protocol_type.clone(),
                                protocol_name: g.protocol_name.clone(),
                                leader: g.leader.clone(),
                                member_id: member_id.clone(),
                                members: Vec::new(),
                            });
                        }
                    }
                } else if req.require_known_member_id && req.group_instance_id.is_none() {
                    g.pending_ids.insert(member_id.clone());
                    return Err(GroupError::MemberIdRequired(member_id));
                }
            } else if !g.members.contains_key(&member_id) && !g.pending_ids.remove(&member_id) {
                return Err(match static_owner {
                    Some(_) => GroupError::FencedInstanceId,
                    None => GroupError::UnknownMemberId,
                });
            }
            if !g.members.contains_key(&member_id) && g.members.len() >= self.config.max_members {
                return Err(GroupError::GroupMaxSizeReached);
            }
            let assignment = g
                .members
                .get(&member_id)
                .map(|m| m.assignment.clone())
                .unwrap_or_default();
            let mut member = member_from(&req, now, assignment);
            member.joined = true;
            if g.members.is_empty() {
                g.protocol_type = req.protocol_type.clone();
            }
            g.members.insert(member_id.clone(), member);
            match g.state {
                // Any join outside a join phase starts one; in Kafka even a rejoin by a known member with
                // unchanged protocols does (the member asked for it).
                GroupState::Empty | GroupState::Stable | GroupState::CompletingRebalance => {
                    g.prepare_rebalance(now, self.initial_delay())
                }
                GroupState::PreparingRebalance | GroupState::Dead => {
                    let deadline = now + Duration::from_millis(req.rebalance_timeout_ms);
                    g.join_deadline = Some(g.join_deadline.map_or(deadline, |d| d.max(deadline)));
                }
            }
            // After prepare_rebalance, which clears every member's flag: this member has joined this phase.
            if let Some(m) = g.members.get_mut(&member_id) {
                m.joined = true;
            }
            // A member that re-sends JoinGroup replaces its earlier waiting request.
            g.join_waiters.retain(|(id, _)| *id != member_id);
            let (tx, rx) = oneshot::channel();
            g.join_waiters.push((member_id.clone(), tx));
            g.maybe_complete_join(now, &req.group_id);
            rx
        };
        rx.await.unwrap_or(Err(GroupError::RebalanceInProgress))
    }

    /// SyncGroup: the leader brings the assignment; the others wait for it.
    pub async fn sync(
        &self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
        assignments: Vec<(String, Bytes)>,
    ) -> Result<SyncResponse, GroupError> {
        let rx = {
            let mut groups = self.groups.lock();
            let g = groups
                .get_mut(group_id)
                .ok_or(GroupError::UnknownMemberId)?;
            let m = g
                .members
                .get_mut(member_id)
                .ok_or(GroupError::UnknownMemberId)?;
            m.last_seen = Instant::now();
            if generation_id != g.generation {
                return Err(GroupError::IllegalGeneration);
            }
            match g.state {
                GroupState::Empty | GroupState::Dead => return Err(GroupError::UnknownMemberId),
                GroupState::PreparingRebalance => return Err(GroupError::RebalanceInProgress),
                GroupState::Stable => {
                    return Ok(SyncResponse {
                        protocol_type: g.protocol_type.clone(),
                        protocol_name: g.protocol_name.clone(),
                        assignment: m.assignment.clone(),
                    })
                }
                GroupState::CompletingRebalance => {}
            }
            if member_id == g.leader {
                for (id, assignment) in assignments {
                    if let Some(m) = g.members.get_mut(&id) {
                        m.assignment = assignment;
                    }
                }
                g.state = GroupState::Stable;
                let reply = |g: &Group, id: &str| SyncResponse {
                    protocol_type: g.protocol_type.clone(),
                    protocol_name: g.protocol_name.clone(),
                    assignment: g
                        .members
                        .get(id)
                        .map(|m| m.assignment.clone())
                        .unwrap_or_default(),
                };
                let waiters: Vec<(String, SyncReply)> = g.sync_waiters.drain(..).collect();
                for (id, w) in waiters {
                    let _ = w.send(Ok(reply(g, &id)));
                }
                return Ok(reply(g, member_id));
            }
            g.sync_waiters.retain(|(id, _)| id != member_id);
            let (tx, rx) = oneshot::channel();
            g.sync_waiters.push((member_id.to_string(), tx));
            rx
        };
        rx.await.unwrap_or(Err(GroupError::RebalanceInProgress))
    }

    /// Heartbeat: keeps the session alive; says REBALANCE_IN_PROGRESS when the member must rejoin.
    pub fn heartbeat(
        &self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
    ) -> Result<(), GroupError> {
        let mut groups = self.groups.lock();
        let g = groups
            .get_mut(group_id)
            .ok_or(GroupError::UnknownMemberId)?;
        let state = g.state;
        let generation = g.generation;
        let m = g
            .members
            .get_mut(member_id)
            .ok_or(GroupError::UnknownMemberId)?;
        m.last_seen = Instant::now();
        match state {
            GroupState::Empty | GroupState::Dead => Err(GroupError::UnknownMemberId),
            GroupState::PreparingRebalance => Err(GroupError::RebalanceInProgress),
            _ if generation_id != generation => Err(GroupError::IllegalGeneration),
            _ => Ok(()),
        }
    }

    /// LeaveGroup for one member, named by member id or (v3+) by static instance id.
    pub fn leave(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Result<(), GroupError> {
        let mut groups = self.groups.lock();
        let g = groups
            .get_mut(group_id)
            .ok_or(GroupError::UnknownMemberId)?;
        let id = match instance_id {
            Some(instance) => {
                let owner = g
                    .instance_owner(instance)
                    .ok_or(GroupError::UnknownMemberId)?;
                if !member_id.is_empty() && owner != member_id {
                    return Err(GroupError::FencedInstanceId);
                }
                owner
            }
            None => member_id.to_string(),
        };
        if !g.members.contains_key(&id) {
            return Err(GroupError::UnknownMemberId);
        }
        info!(group = group_id, member = %id, "member left");
        g.remove_member(&id, Instant::now(), self.initial_delay());
        g.maybe_complete_join(Instant::now(), group_id);
        Ok(())
    }

    /// Checks that an offset commit comes from a current member (or from outside group management while the
    /// group has no members).
    pub fn check_commit(
        &self,
        group_id: &str,
        generation_id: i32,
        member_id: &str,
    ) -> Result<(), GroupError> {
        if group_id.is_empty() {
            return Err(GroupError::InvalidGroupId);
        }
        let groups = self.groups.lock();
        let Some(g) = groups.get(group_id) else {
            return if generation_id < 0 {
                Ok(())
            } else {
                Err(GroupError::IllegalGeneration)
            };
        };
        if generation_id < 0 && member_id.is_empty() {
            return if g.members.is_empty() {
                Ok(())
            } else {
                Err(GroupError::UnknownMemberId)
            };
        }
        if !g.members.contains_key(member_id) {
            return Err(GroupError::UnknownMemberId);
        }
        if generation_id != g.generation {
            return Err(GroupError::IllegalGeneration);
        }
        if g.state == GroupState::CompletingRebalance {
            return Err(GroupError::RebalanceInProgress);
        }
        Ok(())
    }

    /// The group's description; `None` if the coordinator has no state for it (it may still have offsets).
    pub fn describe(&self, group_id: &str) -> Option<GroupDescription> {
        let groups = self.groups.lock();
        let g = groups.get(group_id)?;
        let show_assignment = g.state == GroupState::Stable;
        Some(GroupDescription {
            state: g.state,
            protocol_type: g.protocol_type.clone(),
            protocol_name: if matches!(
                g.state,
                GroupState::Stable | GroupState::CompletingRebalance
            ) {
                g.protocol_name.clone()
            } else {
                String::new()
            },
            members: g
                .members
                .iter()
                .map(|(id, m)| MemberDescription {
                    member_id: id.clone(),
                    group_instance_id: m.instance_id.clone(),
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    metadata: m
                        .protocols
                        .iter()
                        .find(|(n, _)| *n == g.protocol_name)
                        .map(|(_, b)| b.clone())
                        .unwrap_or_default(),
                    assignment: if show_assignment {
                        m.assignment.clone()
                    } else {
                        Bytes::new()
                    },
                })
                .collect(),
        })
    }

    /// Every group with membership state: (group id, protocol type, state).
    pub fn list(&self) -> Vec<(String, String, GroupState)> {
        self.groups
            .lock()
            .iter()
            .filter(|(_, g)| g.state != GroupState::Dead)
            .map(|(id, g)| (id.clone(), g.protocol_type.clone(), g.state))
            .collect()
    }

    /// Forgets a group's membership state; refused while it has members.
    pub fn delete(&self, group_id: &str) -> Result<(), GroupError> {
        let mut groups = self.groups.lock();
        match groups.get(group_id) {
            Some(g) if !g.members.is_empty() => Err(GroupError::NonEmptyGroup),
            Some(_) => {
                groups.remove(group_id);
                Ok(())
            }
            None => Err(GroupError::GroupIdNotFound),
        }
    }

    /// True if the group has members (so its offsets are in use).
    pub fn has_members(&self, group_id: &str) -> bool {
        self.groups
            .lock()
            .get(group_id)
            .is_some_and(|g| !g.members.is_empty())
    }
}

fn member_from(req: &JoinRequest, now: Instant, assignment: Bytes) -> Member {
    Member {
        instance_id: req.group_instance_id.clone(),
        client_id: req.client_id.clone(),
        client_host: req.client_host.clone(),
        session_timeout: Duration::from_millis(req.session_timeout_ms),
        rebalance_timeout: Duration::from_millis(req.rebalance_timeout_ms),
        protocols: req.protocols.clone(),
        last_seen: now,
        joined: false,
        assignment,
    }
}

fn random_suffix() -> String {
    let n: u128 = rand::random();
    format!("{n:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join_req(group: &str, member: &str, instance: Option<&str>) -> JoinRequest {
        JoinRequest {
            group_id: group.into(),
            member_id: member.into(),
            group_instance_id: instance.map(String::from),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 6000,
            rebalance_timeout_ms: 2000,
            protocol_type: "consumer".into(),
            protocols: vec![("range".into(), Bytes::from_static(b"m"))],
            require_known_member_id: false,
        }
    }

    fn coordinator() -> Arc<GroupCoordinator> {
        GroupCoordinator::new(GroupConfig {
            initial_rebalance_delay_ms: 0,
            ..GroupConfig::default()
        })
    }

    #[tokio::test]
    async fn two_members_share_a_generation_and_the_leader_assigns() {
        let c = coordinator();
        let a = c.join(join_req("g", "", None)).await.unwrap();
        assert_eq!(a.generation_id, 1);
        assert_eq!(a.leader, a.member_id);
        let sync_a = c
            .sync(
                "g",
                1,
                &a.member_id,
                vec![(a.member_id.clone(), Bytes::from_static(b"all"))],
            )
            .await
            .unwrap();
        assert_eq!(&sync_a.assignment[..], b"all");
        // A second member starts generation 2; the first learns through its heartbeat and rejoins.
        let c2 = Arc::clone(&c);
        let b = tokio::spawn(async move { c2.join(join_req("g", "", None)).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            c.heartbeat("g", 1, &a.member_id),
            Err(GroupError::RebalanceInProgress)
        );
        let a2 = c.join(join_req("g", &a.member_id, None)).await.unwrap();
        let b = b.await.unwrap().unwrap();
        assert_eq!((a2.generation_id, b.generation_id), (2, 2));
        assert_eq!(a2.leader, a.member_id, "the leader stays the leader");
        assert_eq!(a2.members.len(), 2);
        assert!(b.members.is_empty(), "only the leader sees the members");
        let c3 = Arc::clone(&c);
        let b_id = b.member_id.clone();
        let follower = tokio::spawn(async move { c3.sync("g", 2, &b_id, vec![]).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let assignments = vec![
            (a.member_id.clone(), Bytes::from_static(b"p0")),
            (b.member_id.clone(), Bytes::from_static(b"p1")),
        ];
        assert_eq!(
            &c.sync("g", 2, &a.member_id, assignments)
                .await
                .unwrap()
                .assignment[..],
            b"p0"
        );
        assert_eq!(&follower.await.unwrap().unwrap().assignment[..], b"p1");
        assert_eq!(c.describe("g").unwrap().state, GroupState::Stable);
        // The leader leaves: the group rebalances around the other member.
        c.leave("g", &a.member_id, None).unwrap();
        assert_eq!(
            c.describe("g").unwrap().state,
            GroupState::PreparingRebalance
        );
        assert_eq!(
            c.heartbeat("g", 2, &a.member_id),
            Err(GroupError::UnknownMemberId)
        );
        let b3 = c.join(join_req("g", &b.member_id, None)).await.unwrap();
        assert_eq!(
            (b3.generation_id, b3.leader.as_str()),
            (3, b.member_id.as_str())
        );
        assert_eq!(c.delete("g"), Err(GroupError::NonEmptyGroup));
    }

    #[tokio::test]
    async fn a_new_member_must_rejoin_with_its_assigned_id() {
        let c = coordinator();
        let mut req = join_req("g", "", None);
        req.require_known_member_id = true;
        let Err(GroupError::MemberIdRequired(id)) = c.join(req.clone()).await else {
            panic!("expected MEMBER_ID_REQUIRED");
        };
        req.member_id = id.clone();
        assert_eq!(c.join(req).await.unwrap().member_id, id);
        assert_eq!(
            c.join(join_req("g", "made-up", None)).await.unwrap_err(),
            GroupError::UnknownMemberId
        );
    }

    #[tokio::test]
    async fn expired_sessions_leave_the_group() {
        let c = coordinator();
        let a = c.join(join_req("g", "", None)).await.unwrap();
        c.sync("g", 1, &a.member_id, vec![]).await.unwrap();
        c.tick(Instant::now() + Duration::from_secs(7));
        assert_eq!(c.describe("g").unwrap().state, GroupState::Empty);
        assert!(!c.has_members("g"));
        c.delete("g").unwrap();
        assert_eq!(c.delete("g"), Err(GroupError::GroupIdNotFound));
    }

    #[tokio::test]
    async fn a_restarted_static_member_takes_over_without_a_rebalance() {
        let c = coordinator();
        let a = c.join(join_req("g", "", Some("host-1"))).await.unwrap();
        c.sync(
            "g",
            1,
            &a.member_id,
            vec![(a.member_id.clone(), Bytes::from_static(b"mine"))],
        )
        .await
        .unwrap();
        let again = c.join(join_req("g", "", Some("host-1"))).await.unwrap();
        assert_eq!(again.generation_id, 1, "no new generation");
        assert_ne!(again.member_id, a.member_id);
        assert_eq!(
            &c.sync("g", 1, &again.member_id, vec![])
                .await
                .unwrap()
                .assignment[..],
            b"mine"
        );
        assert_eq!(
            c.heartbeat("g", 1, &a.member_id),
            Err(GroupError::UnknownMemberId)
        );
    }

    #[tokio::test]
    async fn incompatible_protocols_are_refused() {
        let c = coordinator();
        c.join(join_req("g", "", None)).await.unwrap();
        let mut other = join_req("g", "", None);
        other.protocols = vec![("roundrobin".into(), Bytes::new())];
        assert_eq!(
            c.join(other).await.unwrap_err(),
            GroupError::InconsistentGroupProtocol
        );
        let mut short = join_req("g2", "", None);
        short.session_timeout_ms = 10;
        assert_eq!(
            c.join(short).await.unwrap_err(),
            GroupError::InvalidSessionTimeout
        );
    }
}
