// Package task seals and opens signed remediation tasks: the envelope the
// control plane signs with its Ed25519 key and the agent verifies before it
// trusts a single field. Both sides use it, so there is one definition of
// what a valid task is.
//
// The signature covers "tend-envelope-v1" 0x00 payload_type 0x00 payload,
// where payload is exactly the bytes carried in the envelope: Open verifies
// those bytes and only then decodes them, and nothing is ever re-marshalled
// before verification.
package task

import (
	"crypto/ed25519"
	"errors"
	"fmt"
	"slices"
	"strings"

	"google.golang.org/protobuf/proto"

	"tend.dev/tend/internal/pki"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
	taskv1 "tend.dev/tend/proto/tend/task/v1"
)

// PayloadTypeTask is the payload type of a signed taskv1.Task.
const PayloadTypeTask = "tend.task.v1.Task"

// signingContext separates Tend's envelope signatures from anything else the
// same key could ever sign.
const signingContext = "tend-envelope-v1"

// MaxEnvelopeBytes bounds an envelope Open accepts. Tasks are small; the
// bound keeps a hostile delivery from costing more than a quick rejection.
const MaxEnvelopeBytes = 256 << 10

// Code names the rule a task broke. The codes are stable; the messages that
// come with them are for people.
type Code string

// Reasons a task is refused. The first nine come from this package; the
// agent's task runner adds the last three.
const (
	CodeMalformed        Code = "malformed"          // the bytes are not an envelope or not a task
	CodeUnknownKey       Code = "unknown_key"        // signed by a key the agent has not pinned
	CodeBadSignature     Code = "bad_signature"      // the signature does not verify
	CodeWrongPayloadType Code = "wrong_payload_type" // a genuine envelope of another type
	CodeWrongAddressee   Code = "wrong_addressee"    // the task is for another agent
	CodeNotYetValid      Code = "not_yet_valid"      // before not_before
	CodeExpired          Code = "expired"            // after expires_at
	CodeReplay           Code = "replay"             // seq at or below the high-water mark
	CodeInvalid          Code = "invalid"            // a field is missing or out of range
	CodeNotAllowed       Code = "not_allowed"        // outside the agent's allow-list
	CodeInvalidParams    Code = "invalid_params"     // the plugin refused the parameters
	CodeBusy             Code = "busy"               // the agent's task queue is full
)

// RejectError is why a task was refused: a stable Code and a message that
// names the rule and the values involved. errors.Is(err, &RejectError{Code:
// c}) (or one of the Err* sentinels) matches any RejectError with code c.
type RejectError struct {
	Code Code
	Msg  string
}

func (e *RejectError) Error() string {
	if e.Msg == "" {
		return string(e.Code)
	}
	return e.Msg
}

// Is matches another *RejectError with the same code.
func (e *RejectError) Is(target error) bool {
	var t *RejectError
	if !errors.As(target, &t) {
		return false
	}
	return t.Code == e.Code
}

// Sentinels for errors.Is.
var (
	ErrMalformed        = &RejectError{Code: CodeMalformed}
	ErrUnknownKey       = &RejectError{Code: CodeUnknownKey}
	ErrBadSignature     = &RejectError{Code: CodeBadSignature}
	ErrWrongPayloadType = &RejectError{Code: CodeWrongPayloadType}
	ErrWrongAddressee   = &RejectError{Code: CodeWrongAddressee}
	ErrNotYetValid      = &RejectError{Code: CodeNotYetValid}
	ErrExpired          = &RejectError{Code: CodeExpired}
	ErrReplay           = &RejectError{Code: CodeReplay}
	ErrInvalid          = &RejectError{Code: CodeInvalid}
	ErrNotAllowed       = &RejectError{Code: CodeNotAllowed}
	ErrInvalidParams    = &RejectError{Code: CodeInvalidParams}
	ErrBusy             = &RejectError{Code: CodeBusy}
)

// Reject returns a *RejectError with a formatted message.
func Reject(code Code, format string, args ...any) *RejectError {
	return &RejectError{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// CodeOf returns the code of the first RejectError in err's chain, or "".
func CodeOf(err error) Code {
	var re *RejectError
	if errors.As(err, &re) {
		return re.Code
	}
	return ""
}

// signingInput is what the signature covers.
func signingInput(payloadType string, payload []byte) []byte {
	b := make([]byte, 0, len(signingContext)+1+len(payloadType)+1+len(payload))
	b = append(b, signingContext...)
	b = append(b, 0)
	b = append(b, payloadType...)
	b = append(b, 0)
	return append(b, payload...)
}

// SealPayload signs payload as payloadType with key and returns the
// marshalled envelope.
func SealPayload(key *pki.SigningKey, payloadType string, payload []byte) ([]byte, error) {
	if key == nil || len(key.Priv) != ed25519.PrivateKeySize {
		return nil, errors.New("seal: no usable Ed25519 signing key")
	}
	if payloadType == "" || strings.IndexByte(payloadType, 0) >= 0 {
		return nil, fmt.Errorf("seal: invalid payload type %q", payloadType)
	}
	pub := key.Priv.Public().(ed25519.PublicKey)
	id := pki.KeyID(pub)
	if key.ID != "" && key.ID != id {
		return nil, fmt.Errorf("seal: signing key id %q does not match its public key (id %s)", key.ID, id)
	}
	env := &taskv1.Envelope{
		PayloadType: payloadType,
		Payload:     payload,
		KeyId:       id,
		Signature:   ed25519.Sign(key.Priv, signingInput(payloadType, payload)),
	}
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(env)
	if err != nil {
		return nil, fmt.Errorf("seal: marshal envelope: %w", err)
	}
	if len(b) > MaxEnvelopeBytes {
		return nil, fmt.Errorf("seal: envelope is %d bytes, at most %d are accepted", len(b), MaxEnvelopeBytes)
	}
	return b, nil
}

// Seal validates t's fields (see Validate), marshals it deterministically and
// signs it with key. The result is what TaskDelivery.envelope carries. Seal
// does not check the time window: a task may be sealed ahead of its
// not_before.
func Seal(key *pki.SigningKey, t *taskv1.Task) ([]byte, error) {
	if err := Validate(t); err != nil {
		return nil, fmt.Errorf("seal task: %w", err)
	}
	payload, err := proto.MarshalOptions{Deterministic: true}.Marshal(t)
	if err != nil {
		return nil, fmt.Errorf("seal task %s: marshal: %w", t.GetTaskId(), err)
	}
	return SealPayload(key, PayloadTypeTask, payload)
}

// Open verifies envelope against the pinned keys and returns the exact
// payload bytes that were signed, and the id of the key that signed them.
// The envelope must be in canonical form (as Seal writes it: no unknown or
// repeated fields), so that no two byte strings open to the same thing.
// Checks, in order: size and form (malformed), key id (unknown_key),
// signature (bad_signature), payload type (wrong_payload_type).
func Open(envelope []byte, keys map[string]ed25519.PublicKey, wantType string) (payload []byte, keyID string, err error) {
	if len(envelope) == 0 {
		return nil, "", Reject(CodeMalformed, "malformed envelope: empty")
	}
	if len(envelope) > MaxEnvelopeBytes {
		return nil, "", Reject(CodeMalformed, "malformed envelope: %d bytes, at most %d are accepted", len(envelope), MaxEnvelopeBytes)
	}
	env := &taskv1.Envelope{}
	if err := proto.Unmarshal(envelope, env); err != nil {
		return nil, "", Reject(CodeMalformed, "malformed envelope: %v", err)
	}
	if len(env.ProtoReflect().GetUnknown()) > 0 {
		return nil, "", Reject(CodeMalformed, "malformed envelope: not in canonical form (unknown fields)")
	}
	canonical, err := proto.MarshalOptions{Deterministic: true}.Marshal(env)
	if err != nil || string(canonical) != string(envelope) {
		return nil, "", Reject(CodeMalformed, "malformed envelope: not in canonical form (repeated or reordered fields)")
	}
	if env.GetKeyId() == "" {
		return nil, "", Reject(CodeUnknownKey, "envelope names no signing key")
	}
	pub, ok := keys[env.GetKeyId()]
	if !ok {
		return nil, "", Reject(CodeUnknownKey, "signed by unknown key %q: this agent pins %s", env.GetKeyId(), keyList(keys))
	}
	if len(pub) != ed25519.PublicKeySize {
		// ed25519.Verify panics on a short key.
		return nil, "", Reject(CodeUnknownKey, "pinned key %q is %d bytes, want %d: re-enroll the agent", env.GetKeyId(), len(pub), ed25519.PublicKeySize)
	}
	if !ed25519.Verify(pub, signingInput(env.GetPayloadType(), env.GetPayload()), env.GetSignature()) {
		return nil, "", Reject(CodeBadSignature, "signature does not verify with key %s", env.GetKeyId())
	}
	if env.GetPayloadType() != wantType {
		return nil, "", Reject(CodeWrongPayloadType, "payload type is %q, want %q", env.GetPayloadType(), wantType)
	}
	return env.GetPayload(), env.GetKeyId(), nil
}

func keyList(keys map[string]ed25519.PublicKey) string {
	if len(keys) == 0 {
		return "no key (enrollment gave it none)"
	}
	ids := make([]string, 0, len(keys))
	for id := range keys {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return strings.Join(ids, ", ")
}

// OpenTask opens envelope as a task (see Open) and decodes the verified
// payload. A task carrying fields this build does not know is refused
// (malformed): an agent never acts on an order it only partly understands.
// OpenTask does not check the task's fields; call Check.
func OpenTask(envelope []byte, keys map[string]ed25519.PublicKey) (*taskv1.Task, error) {
	payload, _, err := Open(envelope, keys, PayloadTypeTask)
	if err != nil {
		return nil, err
	}
	t := &taskv1.Task{}
	if err := proto.Unmarshal(payload, t); err != nil {
		return nil, Reject(CodeMalformed, "malformed task payload: %v", err)
	}
	if hasUnknown(t.ProtoReflect()) {
		return nil, Reject(CodeMalformed, "task %s carries fields this tend-agent does not understand; upgrade the agent", t.GetTaskId())
	}
	return t, nil
}

// KeyMap turns the pinned keys from enrollment into the map Open takes. A key
// whose id does not match its public key, or that is not 32 bytes, is left
// out (and so unknown).
func KeyMap(keys []*agentv1.SigningKey) map[string]ed25519.PublicKey {
	m := make(map[string]ed25519.PublicKey, len(keys))
	for _, k := range keys {
		pub := k.GetPublicKey()
		if len(pub) != ed25519.PublicKeySize || pki.KeyID(pub) != k.GetKeyId() {
			continue
		}
		m[k.GetKeyId()] = ed25519.PublicKey(append([]byte(nil), pub...))
	}
	return m
}
