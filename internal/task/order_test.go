package task

import (
	"crypto/ed25519"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	taskv1 "tend.dev/tend/proto/tend/task/v1"
)

func order(now time.Time) *taskv1.StandingOrder {
	return &taskv1.StandingOrder{
		OrderId: "ord-1", AgentId: "agent-1", Policy: "web", PolicyVersion: 2, CheckId: "web",
		Failures: 2, Window: 3, Action: "process.restart", Timeout: durationpb.New(30 * time.Second),
		OfflineAfter: durationpb.New(30 * time.Second), MaxPerHour: 3, VerifyWithin: durationpb.New(30 * time.Second),
		Backoff: durationpb.New(10 * time.Second), NotBefore: timestamppb.New(now.Add(-time.Minute)), ExpiresAt: timestamppb.New(now.Add(time.Hour)),
	}
}

func TestStandingOrderSealOpenCheck(t *testing.T) {
	k := newKey(t)
	keys := map[string]ed25519.PublicKey{k.ID: k.Pub}
	now := time.Now()
	env, err := SealStandingOrder(k, order(now))
	require.NoError(t, err)
	o, err := OpenStandingOrder(env, keys)
	require.NoError(t, err)
	require.Equal(t, "process.restart", o.GetAction())
	require.NoError(t, CheckOrder(o, "agent-1", now, time.Second))

	require.ErrorIs(t, CheckOrder(o, "agent-2", now, time.Second), ErrWrongAddressee)
	require.ErrorIs(t, CheckOrder(o, "agent-1", now.Add(2*time.Hour), time.Second), ErrExpired)
	require.ErrorIs(t, CheckOrder(o, "agent-1", now.Add(-time.Hour), time.Second), ErrNotYetValid)

	// A task envelope is not a standing order, and the reverse.
	_, err = OpenTask(env, keys)
	require.ErrorIs(t, err, ErrWrongPayloadType)
	flipped := append([]byte(nil), env...)
	flipped[len(flipped)-1] ^= 1
	_, err = OpenStandingOrder(flipped, keys)
	require.Error(t, err)

	bad := order(now)
	bad.MaxPerHour = 0
	_, err = SealStandingOrder(k, bad)
	require.ErrorContains(t, err, "max_per_hour")
}
