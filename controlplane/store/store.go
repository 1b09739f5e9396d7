// Package store is the control plane's durable state behind one interface.
// The bbolt implementation (store/bolt) is the default; an etcd
// implementation will satisfy the same interface for HA.
package store

import (
	"errors"
	"time"

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
	// ErrExists is returned when a record with the same id already exists
	// (an agent id, even of a revoked agent, or a token id).
	ErrExists = errors.New("already exists")
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

	Close() error
}
