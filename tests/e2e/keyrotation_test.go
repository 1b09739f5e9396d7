package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	adminv1 "tend.dev/tend/proto/tend/admin/v1"
)

// agentKeyIDs reads the signing key ids an agent pinned (its meta file).
func agentKeyIDs(t *testing.T, dataDir string) []string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dataDir, "identity.json"))
	if err != nil {
		return nil
	}
	var meta struct {
		SigningKeys []struct {
			KeyID string `json:"key_id"`
		} `json:"signingKeys"`
	}
	require.NoError(t, json.Unmarshal(b, &meta))
	var ids []string
	for _, k := range meta.SigningKeys {
		ids = append(ids, k.KeyID)
	}
	return ids
}

// Task-signing key rotation with an overlap: a new key is published to the
// agent while the old one still signs; it is activated only once the agent
// holds it; tasks signed with it run; retiring the old key removes it from
// the agent. The key ring is 0600 and no private key reaches a log.
func TestSigningKeyRotationWithOverlap(t *testing.T) {
	cp := startControlPlane(t, t.TempDir(), "")
	h := newRemediationHost(t, cp, "web-1", cp.token(t), allowDemo)
	agentData := filepath.Join(h.dir, "data")
	admin := cp.admin(t)

	keys, err := admin.ListSigningKeys(ctxTimeout(t, 5*time.Second), &adminv1.ListSigningKeysRequest{})
	require.NoError(t, err)
	require.Len(t, keys.GetKeys(), 1)
	oldID := keys.GetKeys()[0].GetKeyId()
	require.Equal(t, "active", keys.GetKeys()[0].GetState())
	require.Eventually(t, func() bool { return slices.Equal(agentKeyIDs(t, agentData), []string{oldID}) }, 10*time.Second, 100*time.Millisecond)

	// 1. Rotate: published, not yet signing; the agent receives it.
	rot, err := admin.RotateSigningKey(ctxTimeout(t, 5*time.Second), &adminv1.RotateSigningKeyRequest{})
	require.NoError(t, err)
	newID := rot.GetKey().GetKeyId()
	require.Equal(t, "published", rot.GetKey().GetState())
	require.Eventually(t, func() bool {
		ids := agentKeyIDs(t, agentData)
		return slices.Contains(ids, oldID) && slices.Contains(ids, newID)
	}, 10*time.Second, 100*time.Millisecond, "the agent holds the old and the new key")
	require.Eventually(t, func() bool {
		resp, err := admin.ListSigningKeys(ctxTimeout(t, 5*time.Second), &adminv1.ListSigningKeysRequest{})
		if err != nil {
			return false
		}
		for _, k := range resp.GetKeys() {
			if k.GetKeyId() == newID {
				return k.GetAgentsHolding() == 1 && k.GetAgentsTotal() == 1
			}
		}
		return false
	}, 20*time.Second, 200*time.Millisecond, "the control plane learns the agent holds the new key")

	// 2. Activate: the new key signs; the old one is still accepted.
	act, err := admin.ActivateSigningKey(ctxTimeout(t, 5*time.Second), &adminv1.ActivateSigningKeyRequest{KeyId: newID})
	require.NoError(t, err)
	require.Equal(t, "active", act.GetKey().GetState())
	applyDemoPolicies(t, cp, "web-1")
	require.NoError(t, syscall.Kill(servicePid(h), syscall.SIGKILL))
	got := waitIncident(t, cp, "web-1", "demo-process", 45*time.Second, "resolved", "escalated")
	require.Equal(t, "resolved", got.GetIncident().GetState(), "timeline: %v", kinds(got.GetIncident()))
	signedWith := ""
	for _, e := range got.GetIncident().GetTimeline() {
		if e.GetKind() == "signed" {
			signedWith = e.GetMessage()
		}
	}
	require.Contains(t, signedWith, "signed with key "+newID)

	// 3. Retire the old key: the agent drops it.
	_, err = admin.RetireSigningKey(ctxTimeout(t, 5*time.Second), &adminv1.RetireSigningKeyRequest{KeyId: oldID})
	require.ErrorContains(t, err, "may still be in flight", "too early: tasks the old key signed may be on their way")
	_, err = admin.RetireSigningKey(ctxTimeout(t, 5*time.Second), &adminv1.RetireSigningKeyRequest{KeyId: oldID, Force: true})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return slices.Equal(agentKeyIDs(t, agentData), []string{newID}) }, 10*time.Second, 100*time.Millisecond)
	_, err = admin.RetireSigningKey(ctxTimeout(t, 5*time.Second), &adminv1.RetireSigningKeyRequest{KeyId: newID})
	require.ErrorContains(t, err, "active key", "the active key cannot be retired")

	// The ring survives a restart, and is private.
	cp.restart(t, 0)
	keys, err = cp.admin(t).ListSigningKeys(ctxTimeout(t, 5*time.Second), &adminv1.ListSigningKeysRequest{})
	require.NoError(t, err)
	states := map[string]string{}
	for _, k := range keys.GetKeys() {
		states[k.GetKeyId()] = k.GetState()
	}
	require.Equal(t, map[string]string{oldID: "retired", newID: "active"}, states)
	fi, err := os.Stat(filepath.Join(cp.dataDir, "task-signing-keys.json"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	require.NotContains(t, cp.output(), "PRIVATE KEY", "keys are never logged")
	require.False(t, strings.Contains(h.agent.output(), "PRIVATE KEY"))
}
