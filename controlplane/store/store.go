// Package store is the control plane's durable state behind one interface.
// The bbolt implementation (store/bolt) is the default; an etcd
// implementation will satisfy the same interface for HA.
package store

import (
	"errors"
	"time"

	"google.golang.org/protobuf/proto"

	agentv1 "tend.dev/tend/proto/tend/agent/v1"
)

// Errors every implementation returns (wrapped with context) so that callers
// can map them with errors.Is.
var (
	ErrNotFound     = errors.New("not found")
	ErrTokenUnknown = errors.New("unknown join token")
	ErrTokenExpired = errors.New("join token expired")
	ErrTokenUsedUp  = errors.New("join token already used")
	ErrNameTaken    = errors.New("agent name already enrolled")
	ErrRevoked      = errors.New("agent revoked")
	// ErrGap refuses a result batch whose predecessor on the same stream
	// was not stored.
	ErrGap = errors.New("an earlier batch was not stored")
	// ErrExists is returned when a record with the same id already exists
	// (an agent id, even of a revoked agent, or a token id).
	ErrExists = errors.New("already exists")
	// ErrTerminal is returned when an update would take an incident or a
	// task out of a terminal state (a resolved incident re-opened, a
	// finished task reported running again), or a task is created for a
	// closed incident. Callers ignore it for late or replayed reports.
	ErrTerminal = errors.New("already in a terminal state")
	// ErrState is returned when a record is not in the state an operation
	// needs (approving a task that does not await approval).
	ErrState = errors.New("not in the state the operation needs")
)

// Agent statuses, as shown by the admin API.
const (
	StatusConnected    = "connected"
	StatusDisconnected = "disconnected"
	StatusDown         = "down"
)

// Agent is one enrolled agent.
type Agent struct {
	ID            string            `json:"id"`
	Name          string            `json:"name"`
	Labels        map[string]string `json:"labels,omitempty"`
	Facts         map[string]string `json:"facts,omitempty"`
	Version       string            `json:"version,omitempty"`
	EnrolledAt    time.Time         `json:"enrolledAt"`
	LastSeen      time.Time         `json:"lastSeen"`
	Status        string            `json:"status"`
	Revoked       bool              `json:"revoked,omitempty"`
	RevokedAt     time.Time         `json:"revokedAt,omitzero"`
	OutboxDropped uint64            `json:"outboxDropped,omitempty"`
	// CertExpiresAt is when the agent's latest certificate expires: after
	// that it can never connect again, and its name may be enrolled anew.
	CertExpiresAt time.Time `json:"certExpiresAt,omitzero"`
}

// Token is a join token. Only the SHA-256 of its secret is stored.
type Token struct {
	ID          string    `json:"id"`
	SecretHash  []byte    `json:"secretHash"`
	CreatedAt   time.Time `json:"createdAt"`
	ExpiresAt   time.Time `json:"expiresAt"`
	Uses        uint32    `json:"uses"`      // how many enrollments it allows
	UsedCount   uint32    `json:"usedCount"` // how many it has done
	Description string    `json:"description,omitempty"`
}

// Policy is a stored policy: its spec is canonical JSON.
type Policy struct {
	Name      string    `json:"name"`
	Version   uint64    `json:"version"`
	Spec      []byte    `json:"spec"`
	UpdatedAt time.Time `json:"updatedAt"`
}

// PolicyChange says what ApplyPolicies did with one policy.
type PolicyChange struct {
	Name    string
	Version uint64
	Action  string // created | configured | unchanged
}

// ResultBatch is one agent's batch of results, in seq order.
type ResultBatch struct {
	AgentID string
	Results []*agentv1.CheckResult
	// OutboxDropped is the agent's running count of results its outbox
	// dropped; stored on the agent record when it grows.
	OutboxDropped uint64
	// After is the last seq of the batch sent before this one on the same
	// stream (or the high-water mark the stream started from). A batch is
	// refused (CommitOutcome.Err wraps ErrGap) if the stored high-water
	// mark is below it: then an earlier batch failed and the agent must
	// resend from its first unacknowledged result.
	After uint64
	// Encoded optionally holds the protobuf encoding of each result, in
	// order (see EncodeResults), made by the caller off the commit path;
	// a store that needs it encodes the results itself when it is nil.
	Encoded [][]byte
}

// EncodeResults sets b.Encoded, if it is not set and every result
// encodes; otherwise it leaves b as it is (the store then encodes, and
// reports what is wrong).
func EncodeResults(b *ResultBatch) {
	if b.Encoded != nil {
		return
	}
	enc := make([][]byte, len(b.Results))
	for i, r := range b.Results {
		if r == nil {
			return
		}
		raw, err := proto.Marshal(r)
		if err != nil {
			return
		}
		enc[i] = raw
	}
	b.Encoded = enc
}

// CommitOutcome is what CommitResults did with one batch.
type CommitOutcome struct {
	Stored       int    // results that were new
	Duplicates   int    // results at or below the agent's high-water mark
	AckedThrough uint64 // the agent's result high-water mark after the commit
	// Err is set when this batch alone was refused (nothing of it stored)
	// while the other batches of the same CommitResults call were stored:
	// ErrNotFound for an unknown agent, ErrRevoked for a revoked one, or a
	// description of an invalid result. One bad batch never fails the group.
	Err error
}

// CheckState is the latest result of one (agent, check).
type CheckState struct {
	AgentID    string
	CheckID    string
	Last       *agentv1.CheckResult
	Since      time.Time // when the status last changed
	Streak     uint64    // results in a row with the current status
	HistoryLen uint64    // results in the bounded history
}

// AgentCounters are per-agent ingest counters.
type AgentCounters struct {
	ResultsStored uint64 // unique results ever stored
	HighWater     uint64 // highest result seq stored
}

// Store is the control plane's durable state. Every method is safe for
// concurrent use. Methods that change several records do so atomically.
type Store interface {
	// CreateToken stores a new join token.
	CreateToken(t Token) error
	// EnrollAgent consumes one use of the token (checking its secret hash in
	// constant time, its expiry and its use count) and creates the agent, in
	// one transaction. It returns ErrTokenUnknown, ErrTokenExpired,
	// ErrTokenUsedUp, ErrNameTaken or ErrExists (the id was used before, even
	// by a revoked agent: ids are never reused) (wrapped) when it refuses.
	EnrollAgent(tokenID string, secretHash []byte, now time.Time, a Agent) error

	GetAgent(id string) (Agent, error)
	// GetAgentByName returns ErrNotFound if no agent has that name.
	GetAgentByName(name string) (Agent, error)
	ListAgents() ([]Agent, error)
	// UpdateAgent reads, changes and writes one agent atomically.
	// ErrNotFound if there is no such agent; fn's error aborts the update.
	UpdateAgent(id string, fn func(*Agent) error) error
	// PutAgents writes several agents in one transaction (liveness flushes),
	// all or none. It never creates an agent (ErrNotFound for an unknown
	// id). For UpdateAgent and PutAgents alike: revocation is for good (a
	// stored Revoked agent stays revoked, RevokedAt kept), OutboxDropped
	// never goes down, and a new name must not be held by another
	// non-revoked agent (ErrNameTaken).
	PutAgents(agents []Agent) error

	// ApplyPolicies stores every policy or none. A policy whose spec changed
	// gets version+1; an identical one is left unchanged.
	ApplyPolicies(ps []Policy, now time.Time) ([]PolicyChange, error)
	GetPolicy(name string) (Policy, error)
	ListPolicies() ([]Policy, error)
	DeletePolicy(name string) error

	// CommitResults stores many batches in one transaction (one fsync):
	// results at or below the agent's high-water mark are skipped, the others
	// go to the bounded history and update the latest state. It returns one
	// outcome per batch, in order. A batch that is refused on its own (see
	// CommitOutcome.Err) does not fail the call; the returned error is for
	// the whole transaction, in which case nothing was stored.
	CommitResults(batches []ResultBatch) ([]CommitOutcome, error)
	// Counters returns the agent's ingest counters.
	Counters(agentID string) (AgentCounters, error)
	// ListCheckStates returns the latest state of every check of the agent,
	// or of every agent when agentID is "".
	ListCheckStates(agentID string) ([]CheckState, error)
	// ListResults returns the stored history of one check, oldest first;
	// limit 0 means all, otherwise the newest limit results.
	ListResults(agentID, checkID string, limit int) ([]*agentv1.CheckResult, error)

	RemediationStore
	CredentialStore

	Close() error
}

// Incident states.
const (
	IncidentOpen        = "open"
	IncidentRemediating = "remediating"
	IncidentVerifying   = "verifying"
	IncidentResolved    = "resolved"
	IncidentEscalated   = "escalated"
	IncidentSuppressed  = "suppressed"
	IncidentFlapping    = "flapping"
)

// IncidentTerminal reports whether an incident in this state is closed: a
// new trigger for the same (agent, policy) opens a new incident.
func IncidentTerminal(state string) bool {
	return state == IncidentResolved || state == IncidentEscalated
}

// Task states (as agentv1.TaskState, lower-case).
const (
	// TaskAwaitingApproval: created for a policy with requireApproval; not
	// signed and without a seq until `tendctl approve task` (SealTask).
	TaskAwaitingApproval = "awaiting_approval"
	TaskPending          = "pending"
	TaskSent             = "sent"
	TaskRunning          = "running"
	TaskSucceeded        = "succeeded"
	TaskFailed           = "failed"
	TaskExpired          = "expired"
	TaskRejected         = "rejected"
)

// TaskTerminal reports whether a task in this state is finished.
func TaskTerminal(state string) bool {
	switch state {
	case TaskSucceeded, TaskFailed, TaskExpired, TaskRejected:
		return true
	}
	return false
}

// Event is one entry of an incident's timeline.
type Event struct {
	At time.Time `json:"at"`
	// Kind: detected, decided, suppressed, signed, sent, started, finished,
	// verified, retry, escalated, flapping, resolved, rejected, expired.
	Kind    string `json:"kind"`
	Message string `json:"message"`
	// Rule that stopped automation, for suppressed events (cooldown,
	// max_attempts, max_concurrent, max_per_hour, approval_required, shadow, ...).
	Rule   string `json:"rule,omitempty"`
	TaskID string `json:"taskId,omitempty"`
}

// Incident is one failure of one (agent, policy), from trigger to close.
type Incident struct {
	ID            string    `json:"id"`
	AgentID       string    `json:"agentId"`
	Policy        string    `json:"policy"`
	PolicyVersion uint64    `json:"policyVersion"`
	State         string    `json:"state"`
	OpenedAt      time.Time `json:"openedAt"`
	UpdatedAt     time.Time `json:"updatedAt"`
	ResolvedAt    time.Time `json:"resolvedAt,omitzero"`
	Attempts      int       `json:"attempts"`
	// Reason is the latest explanation (why it opened, why it is waiting,
	// why it was escalated).
	Reason   string  `json:"reason"`
	Timeline []Event `json:"timeline"`
}

// Task is one signed remediation order.
type Task struct {
	ID            string    `json:"id"`
	IncidentID    string    `json:"incidentId"`
	AgentID       string    `json:"agentId"`
	Policy        string    `json:"policy"`
	PolicyVersion uint64    `json:"policyVersion"`
	Action        string    `json:"action"`
	Params        []byte    `json:"params"` // JSON object
	State         string    `json:"state"`
	Seq           uint64    `json:"seq"` // per-agent, assigned by CreateTask
	Attempt       int       `json:"attempt"`
	CreatedAt     time.Time `json:"createdAt"`
	NotBefore     time.Time `json:"notBefore"`
	ExpiresAt     time.Time `json:"expiresAt"`
	SentAt        time.Time `json:"sentAt,omitzero"`
	StartedAt     time.Time `json:"startedAt,omitzero"`
	FinishedAt    time.Time `json:"finishedAt,omitzero"`
	Output        string    `json:"output,omitempty"`
	Reason        string    `json:"reason,omitempty"`
	// Envelope is the signed tend.task.v1.Envelope as sent to the agent.
	Envelope []byte `json:"envelope,omitempty"`
	// ApprovedBy is set when a task that needs approval was approved.
	ApprovedBy string    `json:"approvedBy,omitempty"`
	ApprovedAt time.Time `json:"approvedAt,omitzero"`
	// ApprovalDeadline: until when an approval is accepted (awaiting
	// approval only).
	ApprovalDeadline time.Time `json:"approvalDeadline,omitzero"`
}

// IncidentFilter selects incidents; zero fields match everything.
type IncidentFilter struct {
	AgentID  string
	Policy   string
	OpenOnly bool // not resolved or escalated
}

// TaskFilter selects tasks; zero fields match everything.
type TaskFilter struct {
	AgentID    string
	IncidentID string
	States     []string
}

// RemediationStore keeps incidents and tasks. It is part of Store.
type RemediationStore interface {
	// CreateIncident stores a new incident. At most one non-terminal
	// incident may exist per (agent, policy): a second one is refused with
	// ErrExists (wrapped) naming the open one; so is a used id. ID, AgentID,
	// Policy and a known State are required; a zero OpenedAt is set to now.
	CreateIncident(inc Incident) error
	// GetIncident returns ErrNotFound (wrapped) for an unknown id.
	GetIncident(id string) (Incident, error)
	// OpenIncident returns the non-terminal incident of (agent, policy), or
	// ErrNotFound.
	OpenIncident(agentID, policy string) (Incident, error)
	// UpdateIncident reads, changes and writes one incident atomically,
	// keeping the open-incident index right when the state becomes terminal.
	// fn's error aborts the update and is returned as is. fn may not change
	// ID, AgentID or Policy; a terminal incident never becomes non-terminal
	// again (ErrTerminal, wrapped; nothing written).
	UpdateIncident(id string, fn func(*Incident) error) error
	// ListIncidents returns matching incidents, newest first (by OpenedAt).
	ListIncidents(f IncidentFilter) ([]Incident, error)

	// CreateTask stores a task. A task in state TaskAwaitingApproval gets no
	// seq and is not sealed (seal may be nil): SealTask does both once it is
	// approved. Any other task: CreateTask assigns the agent's next sequence number (strictly
	// increasing per agent, never reused, persisted), calls seal (which signs
	// it and sets Envelope) and stores it, all in one transaction; if seal
	// fails nothing is stored and the sequence number is not consumed.
	// seal runs inside the store's write transaction: it must not call the
	// store. The incident must exist (ErrNotFound), belong to the task's
	// agent and not be terminal (ErrTerminal); a used task id is ErrExists.
	// It returns the task as stored (Seq and Envelope set).
	CreateTask(t Task, seal func(*Task) error) (Task, error)
	// GetTask returns ErrNotFound (wrapped) for an unknown id.
	GetTask(id string) (Task, error)
	// UpdateTask reads, changes and writes one task atomically. fn's error
	// aborts the update and is returned as is. fn may not change ID,
	// AgentID, IncidentID or Seq; a terminal task never becomes
	// non-terminal again (ErrTerminal, wrapped; nothing written).
	UpdateTask(id string, fn func(*Task) error) error
	// ListTasks returns matching tasks, newest first (by CreatedAt).
	ListTasks(f TaskFilter) ([]Task, error)
	// SealTask turns a task awaiting approval into one that can be sent, in
	// one transaction: it assigns the agent's next sequence number, then
	// seal sets the task's times, approval and state (pending) and signs it.
	// A task not awaiting approval is refused with ErrState (wrapped); if
	// seal fails nothing is written.
	SealTask(id string, seal func(*Task) error) (Task, error)
	// TaskSeq returns the agent's last assigned task sequence number (0 if
	// it never had a task).
	TaskSeq(agentID string) (uint64, error)

	// GetPolicyState returns a policy's safety-rail state (ErrNotFound if
	// it never had one); PutPolicyState replaces it; ListPolicyStates
	// returns all of them.
	GetPolicyState(policy string) (PolicyState, error)
	PutPolicyState(ps PolicyState) error
	ListPolicyStates() ([]PolicyState, error)

	// UpdateRemediation runs fn in one write transaction: every change fn
	// makes through tx is stored together (one commit, one fsync), or none
	// of them if fn returns an error, which is returned as is. So a
	// decision of the remediation loop (its incident, its signed task with
	// the agent's new sequence number, and their timeline events) is
	// durable all at once. The methods of tx check and behave as the
	// methods of the same name above, each seeing the changes made before
	// it in the same transaction; a value one of them returns (a task's
	// Seq) is durable only once UpdateRemediation returns nil. fn must not
	// call the store (it would wait for itself).
	UpdateRemediation(fn func(tx RemediationTx) error) error
}

// RemediationTx is the write transaction of UpdateRemediation.
type RemediationTx interface {
	CreateIncident(inc Incident) error
	UpdateIncident(id string, fn func(*Incident) error) error
	CreateTask(t Task, seal func(*Task) error) (Task, error)
	SealTask(id string, seal func(*Task) error) (Task, error)
	UpdateTask(id string, fn func(*Task) error) error
	PutPolicyState(ps PolicyState) error
}

// Credential is a client certificate issued to an operator of the admin
// API (not to agents).
type Credential struct {
	Name      string    `json:"name"`
	Role      string    `json:"role"`
	Serial    string    `json:"serial"` // hex
	IssuedAt  time.Time `json:"issuedAt"`
	ExpiresAt time.Time `json:"expiresAt"`
	IssuedBy  string    `json:"issuedBy"`
	Revoked   bool      `json:"revoked,omitempty"`
	RevokedAt time.Time `json:"revokedAt,omitzero"`
}

// CredentialStore keeps the admin API's credentials. It is part of Store.
type CredentialStore interface {
	// PutCredential stores or replaces a credential by serial.
	PutCredential(c Credential) error
	// ListCredentials returns every credential, by issue time.
	ListCredentials() ([]Credential, error)
}

// FleetAgentID is the AgentID of a fleet-wide incident (one per policy
// while open): a correlated failure of many agents.
const FleetAgentID = "fleet"

// PolicyState is what the remediation loop must remember about a policy
// across restarts: its circuit breaker and its correlated-failure hold.
type PolicyState struct {
	Policy string `json:"policy"`
	// Failures are the ends of failed attempts still inside the breaker's
	// window (oldest first).
	Failures        []time.Time `json:"failures,omitempty"`
	BreakerOpen     bool        `json:"breakerOpen,omitempty"`
	BreakerOpenedAt time.Time   `json:"breakerOpenedAt,omitzero"`
	BreakerReason   string      `json:"breakerReason,omitempty"`
	// Correlated: a fleet-wide incident holds host-by-host remediation.
	Correlated       bool      `json:"correlated,omitempty"`
	CorrelatedAt     time.Time `json:"correlatedAt,omitzero"`
	CorrelatedReason string    `json:"correlatedReason,omitempty"`
	FleetIncidentID  string    `json:"fleetIncidentId,omitempty"`
	// FailingAgents are the agents failing when the hold started: after a
	// restart they count as failing until they report a pass.
	FailingAgents []string `json:"failingAgents,omitempty"`
	// ReportedRuns are the latest autonomous run ids recorded into an
	// incident that was already open (deduplication of resent reports).
	ReportedRuns []string `json:"reportedRuns,omitempty"`
	// The last re-arm by a person.
	RearmedAt time.Time `json:"rearmedAt,omitzero"`
	RearmedBy string    `json:"rearmedBy,omitempty"`
}
