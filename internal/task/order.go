package task

import (
	"crypto/ed25519"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"tend.dev/tend/internal/pki"
	taskv1 "tend.dev/tend/proto/tend/task/v1"
)

// PayloadTypeStandingOrder is the payload type of a signed
// taskv1.StandingOrder.
const PayloadTypeStandingOrder = "tend.task.v1.StandingOrder"

// Limits on a standing order.
const (
	MaxOrderPerHour = 60
	MaxOrderWindow  = 100
)

// ValidateOrder checks a standing order's fields (not its time window).
func ValidateOrder(o *taskv1.StandingOrder) error {
	switch {
	case !validID(o.GetOrderId()):
		return Reject(CodeMalformed, "standing order: order_id empty or over 128 bytes")
	case !validID(o.GetAgentId()):
		return Reject(CodeMalformed, "standing order %s: no agent_id", o.GetOrderId())
	case o.GetCheckId() == "" || o.GetPolicy() == "":
		return Reject(CodeMalformed, "standing order %s: no policy or check_id", o.GetOrderId())
	case !actionRE.MatchString(o.GetAction()):
		return Reject(CodeMalformed, "standing order %s: invalid action %q", o.GetOrderId(), o.GetAction())
	case o.GetFailures() < 1 || o.GetWindow() < o.GetFailures() || o.GetWindow() > MaxOrderWindow:
		return Reject(CodeMalformed, "standing order %s: trigger %d of %d is invalid", o.GetOrderId(), o.GetFailures(), o.GetWindow())
	case o.GetMaxPerHour() < 1 || o.GetMaxPerHour() > MaxOrderPerHour:
		return Reject(CodeMalformed, "standing order %s: max_per_hour %d not in 1..%d", o.GetOrderId(), o.GetMaxPerHour(), MaxOrderPerHour)
	case o.GetTimeout().AsDuration() <= 0 || o.GetTimeout().AsDuration() > MaxTimeout:
		return Reject(CodeMalformed, "standing order %s: timeout %s not in (0, %s]", o.GetOrderId(), o.GetTimeout().AsDuration(), MaxTimeout)
	case o.GetOfflineAfter().AsDuration() <= 0 || o.GetVerifyWithin().AsDuration() <= 0:
		return Reject(CodeMalformed, "standing order %s: offline_after and verify_within must be positive", o.GetOrderId())
	case o.GetNotBefore() == nil || o.GetExpiresAt() == nil || !o.GetExpiresAt().AsTime().After(o.GetNotBefore().AsTime()):
		return Reject(CodeMalformed, "standing order %s: missing or empty validity window", o.GetOrderId())
	}
	return nil
}

// SealStandingOrder validates, marshals deterministically and signs o.
func SealStandingOrder(key *pki.SigningKey, o *taskv1.StandingOrder) ([]byte, error) {
	if err := ValidateOrder(o); err != nil {
		return nil, fmt.Errorf("seal standing order: %w", err)
	}
	payload, err := proto.MarshalOptions{Deterministic: true}.Marshal(o)
	if err != nil {
		return nil, fmt.Errorf("seal standing order %s: marshal: %w", o.GetOrderId(), err)
	}
	return SealPayload(key, PayloadTypeStandingOrder, payload)
}

// OpenStandingOrder verifies an envelope as a standing order (see Open),
// decodes it and validates its fields. Like OpenTask it refuses fields this
// build does not know.
func OpenStandingOrder(envelope []byte, keys map[string]ed25519.PublicKey) (*taskv1.StandingOrder, error) {
	payload, _, err := Open(envelope, keys, PayloadTypeStandingOrder)
	if err != nil {
		return nil, err
	}
	o := &taskv1.StandingOrder{}
	if err := proto.Unmarshal(payload, o); err != nil {
		return nil, Reject(CodeMalformed, "malformed standing order payload: %v", err)
	}
	if hasUnknown(o.ProtoReflect()) {
		return nil, Reject(CodeMalformed, "standing order %s carries fields this tend-agent does not understand; upgrade the agent", o.GetOrderId())
	}
	if err := ValidateOrder(o); err != nil {
		return nil, err
	}
	return o, nil
}

// CheckOrder checks that a verified order is for this agent and valid at
// now (with maxSkew at both ends).
func CheckOrder(o *taskv1.StandingOrder, agentID string, now time.Time, maxSkew time.Duration) error {
	if o.GetAgentId() != agentID {
		return Reject(CodeWrongAddressee, "standing order %s is for agent %s, this is agent %s", o.GetOrderId(), o.GetAgentId(), agentID)
	}
	if nb := o.GetNotBefore().AsTime(); now.Add(maxSkew).Before(nb) {
		return Reject(CodeNotYetValid, "standing order %s is not valid before %s", o.GetOrderId(), nb.UTC().Format(time.RFC3339))
	}
	if exp := o.GetExpiresAt().AsTime(); !now.Add(-maxSkew).Before(exp) {
		return Reject(CodeExpired, "standing order %s expired at %s", o.GetOrderId(), exp.UTC().Format(time.RFC3339))
	}
	return nil
}
