package task

import (
	"regexp"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	taskv1 "tend.dev/tend/proto/tend/task/v1"
)

// Bounds on a task's fields.
const (
	MaxIDLen   = 128
	MaxTimeout = time.Hour
)

var (
	// idRE is what task, agent and incident ids may look like.
	idRE = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]*$`)
	// actionRE is "<plugin>.<action>" as policies write it.
	actionRE = regexp.MustCompile(`^[a-z][a-z0-9-]*\.[a-z][a-z0-9-]*$`)
)

func validID(s string) bool { return len(s) <= MaxIDLen && idRE.MatchString(s) }

// Validate checks the fields of t that do not depend on who receives it or
// when: ids, action, sequence number, time window and timeout. It returns a
// RejectError with CodeInvalid.
func Validate(t *taskv1.Task) error {
	if t == nil {
		return Reject(CodeInvalid, "invalid task: empty")
	}
	switch {
	case !validID(t.GetTaskId()):
		return Reject(CodeInvalid, "invalid task: task_id %q must be 1-%d letters, digits, '.', '_', ':' or '-'", t.GetTaskId(), MaxIDLen)
	case !validID(t.GetAgentId()):
		return Reject(CodeInvalid, "invalid task %s: agent_id %q must be 1-%d letters, digits, '.', '_', ':' or '-'", t.GetTaskId(), t.GetAgentId(), MaxIDLen)
	case t.GetIncidentId() != "" && !validID(t.GetIncidentId()):
		return Reject(CodeInvalid, "invalid task %s: incident_id %q must be letters, digits, '.', '_', ':' or '-'", t.GetTaskId(), t.GetIncidentId())
	case !actionRE.MatchString(t.GetAction()):
		return Reject(CodeInvalid, "invalid task %s: action %q is not <plugin>.<action>", t.GetTaskId(), t.GetAction())
	case t.GetSeq() == 0:
		return Reject(CodeInvalid, "invalid task %s: seq must be at least 1", t.GetTaskId())
	case t.GetExpiresAt() == nil:
		return Reject(CodeInvalid, "invalid task %s: expires_at is required (a task that never expires could be replayed forever)", t.GetTaskId())
	case t.GetTimeout() == nil:
		return Reject(CodeInvalid, "invalid task %s: timeout is required", t.GetTaskId())
	}
	if err := t.GetExpiresAt().CheckValid(); err != nil {
		return Reject(CodeInvalid, "invalid task %s: expires_at: %v", t.GetTaskId(), err)
	}
	if nb := t.GetNotBefore(); nb != nil {
		if err := nb.CheckValid(); err != nil {
			return Reject(CodeInvalid, "invalid task %s: not_before: %v", t.GetTaskId(), err)
		}
		if !t.GetExpiresAt().AsTime().After(nb.AsTime()) {
			return Reject(CodeInvalid, "invalid task %s: expires_at %s is not after not_before %s", t.GetTaskId(), stamp(t.GetExpiresAt().AsTime()), stamp(nb.AsTime()))
		}
	}
	if err := t.GetTimeout().CheckValid(); err != nil {
		return Reject(CodeInvalid, "invalid task %s: timeout: %v", t.GetTaskId(), err)
	}
	if d := t.GetTimeout().AsDuration(); d <= 0 || d > MaxTimeout {
		return Reject(CodeInvalid, "invalid task %s: timeout %s must be greater than 0 and at most %s", t.GetTaskId(), d, MaxTimeout)
	}
	return nil
}

// Check decides whether the agent agentID may accept t at now, given the
// highest sequence number it has accepted before. maxSkew is the clock
// difference tolerated on both ends of the time window. The checks, in
// order: fields (invalid), addressee (wrong_addressee), sequence (replay),
// not_before (not_yet_valid), expires_at (expired).
func Check(t *taskv1.Task, agentID string, now time.Time, highWater uint64, maxSkew time.Duration) error {
	if err := Validate(t); err != nil {
		return err
	}
	if maxSkew < 0 {
		maxSkew = 0
	}
	if t.GetAgentId() != agentID {
		return Reject(CodeWrongAddressee, "task for agent %s, this is agent %s", t.GetAgentId(), agentID)
	}
	if t.GetSeq() <= highWater {
		return Reject(CodeReplay, "replay: seq %d ≤ high-water mark %d", t.GetSeq(), highWater)
	}
	if nb := t.GetNotBefore(); nb != nil && now.Add(maxSkew).Before(nb.AsTime()) {
		return Reject(CodeNotYetValid, "not valid before %s (agent clock %s, skew allowed %s)", stamp(nb.AsTime()), stamp(now), maxSkew)
	}
	if exp := t.GetExpiresAt().AsTime(); !now.Add(-maxSkew).Before(exp) {
		return Reject(CodeExpired, "expired at %s (agent clock %s, skew allowed %s)", stamp(exp), stamp(now), maxSkew)
	}
	return nil
}

func stamp(t time.Time) string { return t.UTC().Format(time.RFC3339Nano) }

// UntrustedID decodes envelope WITHOUT verifying it, only so that a rejection
// can name the task it was about. The values must never be used to decide
// anything. The id is "" unless it looks like a task id.
func UntrustedID(envelope []byte) (taskID string, seq uint64) {
	if len(envelope) > MaxEnvelopeBytes {
		return "", 0
	}
	env := &taskv1.Envelope{}
	if proto.Unmarshal(envelope, env) != nil || env.GetPayloadType() != PayloadTypeTask {
		return "", 0
	}
	t := &taskv1.Task{}
	if (proto.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(env.GetPayload(), t) != nil {
		return "", 0
	}
	if !validID(t.GetTaskId()) {
		return "", t.GetSeq()
	}
	return t.GetTaskId(), t.GetSeq()
}

// hasUnknown reports whether m or any message inside it carries unknown
// fields.
func hasUnknown(m protoreflect.Message) bool {
	if len(m.GetUnknown()) > 0 {
		return true
	}
	found := false
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			l := v.List()
			for i := 0; i < l.Len() && !found; i++ {
				found = hasUnknown(l.Get(i).Message())
			}
		case fd.IsMap() && fd.MapValue().Message() != nil:
			v.Map().Range(func(_ protoreflect.MapKey, mv protoreflect.Value) bool {
				found = hasUnknown(mv.Message())
				return !found
			})
		case fd.Message() != nil && !fd.IsList() && !fd.IsMap():
			found = hasUnknown(v.Message())
		}
		return !found
	})
	return found
}
