package task

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"tend.dev/tend/internal/pki"
	agentv1 "tend.dev/tend/proto/tend/agent/v1"
	taskv1 "tend.dev/tend/proto/tend/task/v1"
)

var t0 = time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)

// newKey returns a fresh signing key.
func newKey(t testing.TB) *pki.SigningKey {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	return &pki.SigningKey{ID: pki.KeyID(pub), Priv: priv, Pub: pub}
}

func keysOf(ks ...*pki.SigningKey) map[string]ed25519.PublicKey {
	m := map[string]ed25519.PublicKey{}
	for _, k := range ks {
		m[k.ID] = k.Pub
	}
	return m
}

func validTask() *taskv1.Task {
	params, _ := structpb.NewStruct(map[string]any{
		"command": []any{"/usr/sbin/nginx", "-c", "/etc/nginx/nginx.conf"},
		"match":   map[string]any{"pidfile": "/run/nginx.pid"},
	})
	return &taskv1.Task{
		TaskId:        "task-0001",
		AgentId:       "agent-1",
		IncidentId:    "inc-1",
		Policy:        "web-nginx-down",
		PolicyVersion: 3,
		Action:        "process.restart",
		Params:        params,
		Seq:           10,
		NotBefore:     timestamppb.New(t0.Add(-time.Minute)),
		ExpiresAt:     timestamppb.New(t0.Add(5 * time.Minute)),
		Timeout:       durationpb.New(30 * time.Second),
		Attempt:       1,
	}
}

func seal(t testing.TB, k *pki.SigningKey, tk *taskv1.Task) []byte {
	t.Helper()
	env, err := Seal(k, tk)
	require.NoError(t, err)
	return env
}

func TestSealOpenRoundTrip(t *testing.T) {
	k := newKey(t)
	want := validTask()
	env := seal(t, k, want)

	got, err := OpenTask(env, keysOf(k))
	require.NoError(t, err)
	require.True(t, proto.Equal(want, got), "got %v", got)
	require.NoError(t, Check(got, "agent-1", t0, 9, 0))

	payload, keyID, err := Open(env, keysOf(k), PayloadTypeTask)
	require.NoError(t, err)
	require.Equal(t, k.ID, keyID)
	m, _ := proto.MarshalOptions{Deterministic: true}.Marshal(want)
	require.Equal(t, m, payload, "the payload is exactly the signed bytes")

	// Deterministic: the same task seals to the same bytes.
	require.Equal(t, env, seal(t, k, want))

	id, seq := UntrustedID(env)
	require.Equal(t, "task-0001", id)
	require.Equal(t, uint64(10), seq)
}

func TestKeyRotationOverlap(t *testing.T) {
	oldK, newK := newKey(t), newKey(t)
	both := keysOf(oldK, newK)
	for _, k := range []*pki.SigningKey{oldK, newK} {
		_, err := OpenTask(seal(t, k, validTask()), both)
		require.NoError(t, err)
	}
	_, err := OpenTask(seal(t, oldK, validTask()), keysOf(newK))
	require.ErrorIs(t, err, ErrUnknownKey, "the old key is refused once it is unpinned")
}

// resign signs arbitrary envelope contents with k, as a forger holding a key
// would.
func rawEnvelope(env *taskv1.Envelope) []byte {
	b, _ := proto.MarshalOptions{Deterministic: true}.Marshal(env)
	return b
}

func TestOpenRejections(t *testing.T) {
	k, other := newKey(t), newKey(t)
	keys := keysOf(k)
	good := seal(t, k, validTask())
	goodEnv := &taskv1.Envelope{}
	require.NoError(t, proto.Unmarshal(good, goodEnv))
	payload := goodEnv.GetPayload()

	flipped := append([]byte(nil), good...)
	flipped[len(flipped)/2] ^= 0x01

	wrongType, err := SealPayload(k, "tend.task.v1.Other", payload)
	require.NoError(t, err)

	withUnknown := protowire.AppendTag(append([]byte(nil), good...), 99, protowire.BytesType)
	withUnknown = protowire.AppendBytes(withUnknown, []byte("x"))

	// A repeated field: the same payload_type again (last one wins in proto).
	dupField := protowire.AppendTag(append([]byte(nil), good...), 1, protowire.BytesType)
	dupField = protowire.AppendString(dupField, PayloadTypeTask)

	// A task payload with an unknown field, properly signed.
	unknownTaskField := protowire.AppendTag(append([]byte(nil), payload...), 77, protowire.VarintType)
	unknownTaskField = protowire.AppendVarint(unknownTaskField, 1)
	sealedUnknown, err := SealPayload(k, PayloadTypeTask, unknownTaskField)
	require.NoError(t, err)

	notATask, err := SealPayload(k, PayloadTypeTask, []byte{0xff, 0xff, 0xff})
	require.NoError(t, err)

	sigOverOther := rawEnvelope(&taskv1.Envelope{
		PayloadType: PayloadTypeTask, Payload: payload, KeyId: k.ID,
		Signature: ed25519.Sign(other.Priv, signingInput(PayloadTypeTask, payload)),
	})
	// A signature without the domain separation.
	noContext := rawEnvelope(&taskv1.Envelope{
		PayloadType: PayloadTypeTask, Payload: payload, KeyId: k.ID,
		Signature: ed25519.Sign(k.Priv, payload),
	})
	// Type and payload boundaries shifted: "tend.task.v1.Task" + 0x00 + payload
	// must not equal "tend.task.v1.Tas" + ...
	shifted := rawEnvelope(&taskv1.Envelope{
		PayloadType: PayloadTypeTask[:len(PayloadTypeTask)-1], Payload: append([]byte("k"), payload...), KeyId: k.ID,
		Signature: goodEnv.GetSignature(),
	})

	tests := []struct {
		name string
		env  []byte
		keys map[string]ed25519.PublicKey
		code Code
		msg  string
	}{
		{"empty", nil, keys, CodeMalformed, "empty"},
		{"garbage", []byte("not an envelope"), keys, CodeMalformed, "malformed envelope"},
		{"too big", make([]byte, MaxEnvelopeBytes+1), keys, CodeMalformed, "at most"},
		{"truncated", good[:len(good)-3], keys, CodeMalformed, "malformed envelope"},
		{"unknown envelope field", withUnknown, keys, CodeMalformed, "canonical"},
		{"repeated envelope field", dupField, keys, CodeMalformed, "canonical"},
		{"unknown key", good, keysOf(other), CodeUnknownKey, "unknown key"},
		{"no keys pinned", good, nil, CodeUnknownKey, "no key"},
		{"short pinned key", good, map[string]ed25519.PublicKey{k.ID: k.Pub[:10]}, CodeUnknownKey, "10 bytes"},
		{"no key id", rawEnvelope(&taskv1.Envelope{PayloadType: PayloadTypeTask, Payload: payload, Signature: goodEnv.GetSignature()}), keys, CodeUnknownKey, "names no signing key"},
		{"flipped byte", flipped, keys, CodeBadSignature, "signature does not verify"},
		{"signed by another key under this id", sigOverOther, keys, CodeBadSignature, "signature does not verify"},
		{"signature without context", noContext, keys, CodeBadSignature, "signature does not verify"},
		{"type/payload boundary shifted", shifted, keys, CodeBadSignature, "signature does not verify"},
		{"no signature", rawEnvelope(&taskv1.Envelope{PayloadType: PayloadTypeTask, Payload: payload, KeyId: k.ID}), keys, CodeBadSignature, "signature does not verify"},
		{"wrong payload type", wrongType, keys, CodeWrongPayloadType, `payload type is "tend.task.v1.Other"`},
		{"task with unknown field", sealedUnknown, keys, CodeMalformed, "does not understand"},
		{"payload not a task", notATask, keys, CodeMalformed, "malformed task payload"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := OpenTask(tc.env, tc.keys)
			require.Nil(t, got)
			require.Error(t, err)
			require.Equal(t, tc.code, CodeOf(err), "error: %v", err)
			require.ErrorIs(t, err, &RejectError{Code: tc.code})
			require.ErrorContains(t, err, tc.msg)
		})
	}
}

// Every single-bit flip and every byte replaced by its complement, at every
// position of a valid envelope, is refused.
func TestEveryFlippedByteRejected(t *testing.T) {
	k := newKey(t)
	good := seal(t, k, validTask())
	keys := keysOf(k)
	for i := range good {
		for _, mask := range []byte{0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0xff} {
			b := append([]byte(nil), good...)
			b[i] ^= mask
			_, err := OpenTask(b, keys)
			require.Error(t, err, "byte %d ^ %#x accepted", i, mask)
			require.NotEmpty(t, CodeOf(err))
		}
	}
	for n := 0; n < len(good); n++ {
		_, err := OpenTask(good[:n], keys)
		require.Error(t, err, "prefix of %d bytes accepted", n)
	}
}

func TestCheck(t *testing.T) {
	mod := func(f func(*taskv1.Task)) *taskv1.Task {
		tk := validTask()
		f(tk)
		return tk
	}
	tests := []struct {
		name      string
		task      *taskv1.Task
		agent     string
		now       time.Time
		highWater uint64
		skew      time.Duration
		code      Code
		msg       string
	}{
		{"valid", validTask(), "agent-1", t0, 9, 0, "", ""},
		{"valid without not_before", mod(func(tk *taskv1.Task) { tk.NotBefore = nil }), "agent-1", t0, 0, 0, "", ""},
		{"nil", nil, "agent-1", t0, 0, 0, CodeInvalid, "empty"},
		{"wrong addressee", validTask(), "agent-2", t0, 0, 0, CodeWrongAddressee, "task for agent agent-1, this is agent agent-2"},
		{"replay equal", validTask(), "agent-1", t0, 10, 0, CodeReplay, "replay: seq 10 ≤ high-water mark 10"},
		{"replay below", validTask(), "agent-1", t0, 12, 0, CodeReplay, "replay: seq 10 ≤ high-water mark 12"},
		{"not yet valid", validTask(), "agent-1", t0.Add(-2 * time.Minute), 0, 0, CodeNotYetValid, "not valid before 2025-06-01T11:59:00Z"},
		{"not yet valid within skew", validTask(), "agent-1", t0.Add(-2 * time.Minute), 0, 90 * time.Second, "", ""},
		{"expired", validTask(), "agent-1", t0.Add(5 * time.Minute), 0, 0, CodeExpired, "expired at 2025-06-01T12:05:00Z"},
		{"expired within skew", validTask(), "agent-1", t0.Add(5*time.Minute + 10*time.Second), 0, 30 * time.Second, "", ""},
		{"expired beyond skew", validTask(), "agent-1", t0.Add(6 * time.Minute), 0, 30 * time.Second, CodeExpired, "expired at"},
		{"no task id", mod(func(tk *taskv1.Task) { tk.TaskId = "" }), "agent-1", t0, 0, 0, CodeInvalid, "task_id"},
		{"task id with newline", mod(func(tk *taskv1.Task) { tk.TaskId = "a\nb" }), "agent-1", t0, 0, 0, CodeInvalid, "task_id"},
		{"no agent id", mod(func(tk *taskv1.Task) { tk.AgentId = "" }), "", t0, 0, 0, CodeInvalid, "agent_id"},
		{"bad incident id", mod(func(tk *taskv1.Task) { tk.IncidentId = "x y" }), "agent-1", t0, 0, 0, CodeInvalid, "incident_id"},
		{"no action", mod(func(tk *taskv1.Task) { tk.Action = "" }), "agent-1", t0, 0, 0, CodeInvalid, "action"},
		{"action without plugin", mod(func(tk *taskv1.Task) { tk.Action = "restart" }), "agent-1", t0, 0, 0, CodeInvalid, "<plugin>.<action>"},
		{"action injection", mod(func(tk *taskv1.Task) { tk.Action = "exec.run;id" }), "agent-1", t0, 0, 0, CodeInvalid, "action"},
		{"seq 0", mod(func(tk *taskv1.Task) { tk.Seq = 0 }), "agent-1", t0, 0, 0, CodeInvalid, "seq"},
		{"no expiry", mod(func(tk *taskv1.Task) { tk.ExpiresAt = nil }), "agent-1", t0, 0, 0, CodeInvalid, "expires_at is required"},
		{"window inverted", mod(func(tk *taskv1.Task) { tk.NotBefore = timestamppb.New(t0.Add(time.Hour)) }), "agent-1", t0, 0, 0, CodeInvalid, "is not after not_before"},
		{"bad timestamp", mod(func(tk *taskv1.Task) { tk.ExpiresAt = &timestamppb.Timestamp{Seconds: 1, Nanos: -5} }), "agent-1", t0, 0, 0, CodeInvalid, "expires_at"},
		{"no timeout", mod(func(tk *taskv1.Task) { tk.Timeout = nil }), "agent-1", t0, 0, 0, CodeInvalid, "timeout is required"},
		{"zero timeout", mod(func(tk *taskv1.Task) { tk.Timeout = durationpb.New(0) }), "agent-1", t0, 0, 0, CodeInvalid, "timeout 0s"},
		{"negative timeout", mod(func(tk *taskv1.Task) { tk.Timeout = durationpb.New(-time.Second) }), "agent-1", t0, 0, 0, CodeInvalid, "timeout -1s"},
		{"huge timeout", mod(func(tk *taskv1.Task) { tk.Timeout = durationpb.New(48 * time.Hour) }), "agent-1", t0, 0, 0, CodeInvalid, "at most 1h0m0s"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := Check(tc.task, tc.agent, tc.now, tc.highWater, tc.skew)
			if tc.code == "" {
				require.NoError(t, err)
				return
			}
			require.Error(t, err)
			require.Equal(t, tc.code, CodeOf(err), "error: %v", err)
			require.ErrorContains(t, err, tc.msg)
		})
	}
}

func TestSealRefusesInvalid(t *testing.T) {
	k := newKey(t)
	tk := validTask()
	tk.ExpiresAt = nil
	_, err := Seal(k, tk)
	require.ErrorIs(t, err, ErrInvalid)

	_, err = Seal(nil, validTask())
	require.Error(t, err)

	bad := *k
	bad.ID = "0000000000000000"
	_, err = Seal(&bad, validTask())
	require.ErrorContains(t, err, "does not match")
}

func TestRejectErrorIs(t *testing.T) {
	err := Reject(CodeExpired, "expired at x")
	wrapped := errors.Join(errors.New("ctx"), err)
	require.ErrorIs(t, wrapped, ErrExpired)
	require.NotErrorIs(t, wrapped, ErrReplay)
	require.Equal(t, CodeExpired, CodeOf(wrapped))
	require.Equal(t, Code(""), CodeOf(errors.New("plain")))
	require.Equal(t, "busy", ErrBusy.Error())
}

func TestKeyMap(t *testing.T) {
	k, k2 := newKey(t), newKey(t)
	m := KeyMap([]*agentv1.SigningKey{
		{KeyId: k.ID, PublicKey: k.Pub},
		{KeyId: k.ID, PublicKey: k2.Pub}, // id does not match the key
		{KeyId: "short", PublicKey: []byte{1, 2}},
		nil,
	})
	require.Equal(t, map[string]ed25519.PublicKey{k.ID: k.Pub}, m)
}

func TestUntrustedID(t *testing.T) {
	k := newKey(t)
	good := seal(t, k, validTask())
	flipped := append([]byte(nil), good...)
	flipped[len(flipped)-1] ^= 1 // in the signature: the payload still decodes
	id, seq := UntrustedID(flipped)
	require.Equal(t, "task-0001", id)
	require.Equal(t, uint64(10), seq)

	id, seq = UntrustedID([]byte("junk"))
	require.Empty(t, id)
	require.Zero(t, seq)

	tk := validTask()
	tk.TaskId = "evil\nid"
	payload, _ := proto.Marshal(tk)
	env := rawEnvelope(&taskv1.Envelope{PayloadType: PayloadTypeTask, Payload: payload})
	id, seq = UntrustedID(env)
	require.Empty(t, id, "an id that does not look like one is not repeated")
	require.Equal(t, uint64(10), seq)
}
