package main

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/x509"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/timestamppb"

	"tend.dev/tend/controlplane/api"
	"tend.dev/tend/internal/adminconf"
	"tend.dev/tend/internal/pki"
	adminv1 "tend.dev/tend/proto/tend/admin/v1"
)

// Tests of credentials, roles and signing keys. The fake control plane
// enforces the real access policy (api.Authorizer) and signs CSRs with a
// real CA, so a credential made by `credential create` is used for real.

func TestCredentialCreateAndRoles(t *testing.T) {
	f, conf := startFake(t)
	seed(f)
	seedTasks(f)
	admin := func(args ...string) cliResult {
		t.Helper()
		return runCLI(t, nil, "", append([]string{"--config", conf}, args...)...)
	}
	dir := t.TempDir()
	viewerConf := filepath.Join(dir, "viewer.conf")

	r := admin("credential", "create", "ci-bot", "--role", "viewer", "--ttl", "2h", "--out", viewerConf)
	require.Equal(t, 0, r.code, r.stderr)
	require.Empty(t, r.stderr)
	require.Regexp(t, `^credential/ci-bot created: role viewer, serial [0-9a-f]+, expires \S+ \(in (\d+m|1h)\)\n`+
		`wrote `+regexp.QuoteMeta(viewerConf)+` \(mode 0600, holds the private key\): use it with tendctl --config `+regexp.QuoteMeta(viewerConf)+` get agents\n$`, r.stdout)

	// The request: name, role, ttl and a CSR; the key stays here.
	require.Len(t, f.issued, 1)
	req := f.issued[0]
	require.Equal(t, "ci-bot", req.GetName())
	require.Equal(t, "viewer", req.GetRole())
	require.Equal(t, 2*time.Hour, req.GetTtl().AsDuration())
	csr, err := x509.ParseCertificateRequest(req.GetCsrDer())
	require.NoError(t, err)
	require.NoError(t, csr.CheckSignature())
	csrKey, ok := csr.PublicKey.(*ecdsa.PublicKey)
	require.True(t, ok, "an ECDSA key")
	require.Equal(t, elliptic.P256(), csrKey.Curve)

	// The file: a complete admin config for the same server, mode 0600,
	// whose key is the one of the CSR.
	st, err := os.Stat(viewerConf)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), st.Mode().Perm())
	vc, err := adminconf.Load(viewerConf)
	require.NoError(t, err)
	ac, err := adminconf.Load(conf)
	require.NoError(t, err)
	require.Equal(t, ac.Server, vc.Server)
	require.Equal(t, ac.ServerName, vc.ServerName)
	require.Equal(t, strings.TrimSpace(ac.CA), strings.TrimSpace(vc.CA))
	key, err := pki.ParseKeyPEM([]byte(vc.Key))
	require.NoError(t, err)
	require.True(t, csrKey.Equal(key.Public()), "the file's key is the CSR's")
	cert, err := pki.ParseCertPEM([]byte(vc.Cert))
	require.NoError(t, err)
	id, err := pki.IdentityOf(cert)
	require.NoError(t, err)
	require.Equal(t, "ci-bot", id.ID)
	require.Equal(t, "viewer", id.Role)
	_, err = vc.TLSConfig()
	require.NoError(t, err)

	viewer := func(args ...string) cliResult {
		t.Helper()
		return runCLI(t, nil, "", append([]string{"--config", viewerConf}, args...)...)
	}

	// A viewer reads...
	r = viewer("get", "agents", "-o", "json")
	require.Equal(t, 0, r.code, r.stderr)
	var list []map[string]any
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &list))
	require.Len(t, list, 3)
	r = viewer("get", "tasks")
	require.Equal(t, 0, r.code, r.stderr)
	r = viewer("get", "keys")
	require.Equal(t, 0, r.code, r.stderr)

	// ... and is told clearly what it may not do.
	p := writeFile(t, dir, "db.yaml", goodPolicy)
	r = viewer("apply", "-f", p)
	require.Equal(t, 1, r.code)
	require.Empty(t, r.stdout)
	require.Equal(t, "error: permission denied: ApplyPolicies needs the admin role, and the credential in "+viewerConf+
		" has role viewer (an admin can issue another: tendctl credential create NAME --role ROLE --out FILE)\n", r.stderr)
	require.Empty(t, f.applied)
	r = viewer("approve", "task", "task-wait")
	require.Equal(t, 1, r.code)
	require.Equal(t, "error: permission denied: ApproveTask needs the operator or admin role, and the credential in "+viewerConf+
		" has role viewer (an admin can issue another: tendctl credential create NAME --role ROLE --out FILE)\n", r.stderr)
	require.Empty(t, f.approved)
	require.Equal(t, 0, admin("apply", "-f", p).code)
	for _, args := range [][]string{
		{"rearm", "policy", "tcp-db"}, {"delete", "policy", "tcp-db"}, {"delete", "credential", "ci-bot"}, {"get", "credentials"}, {"keys", "rotate"}, {"token", "create"},
		{"credential", "create", "x", "--role", "admin", "--out", filepath.Join(dir, "x.conf")},
	} {
		r = viewer(args...)
		require.Equal(t, 1, r.code, args)
		require.Contains(t, r.stderr, "error: permission denied: ", args)
		require.Contains(t, r.stderr, "has role viewer", args)
	}

	// An operator approves.
	opConf := filepath.Join(dir, "op.conf")
	r = admin("credential", "create", "alice", "--role", "operator", "--out", opConf)
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, 30*24*time.Hour, f.issued[len(f.issued)-1].GetTtl().AsDuration(), "default ttl")
	r = runCLI(t, nil, "", "--config", opConf, "approve", "task", "task-wait")
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, "task task-wait approved by alice (operator); state pending (signed, seq 7; sent when agent demo-1 connects)\n", r.stdout)

	// FILE is never overwritten by accident, and nothing is issued then.
	n := len(f.issued)
	r = admin("credential", "create", "ci-bot", "--role", "viewer", "--out", viewerConf)
	require.Equal(t, 1, r.code)
	require.Equal(t, "error: "+viewerConf+" already exists: not overwritten (use another --out, or --force to replace it)\n", r.stderr)
	r = admin("credential", "create", "ci-bot", "--role", "admin", "--out", conf, "--force")
	require.Equal(t, 1, r.code)
	require.Equal(t, "error: --out "+conf+" is the admin config this command runs with ("+conf+"): write the new credential to another file\n", r.stderr)
	r = admin("credential", "create", "ci-bot", "--role", "viewer", "--out", filepath.Join(dir, "missing", "x.conf"))
	require.Equal(t, 1, r.code)
	require.Equal(t, "error: --out "+filepath.Join(dir, "missing", "x.conf")+": directory "+filepath.Join(dir, "missing")+" does not exist\n", r.stderr)
	r = admin("credential", "create", "ci-bot", "--role", "viewer", "--out", dir)
	require.Equal(t, 1, r.code)
	require.Equal(t, "error: --out "+dir+" is a directory: give a file name\n", r.stderr)
	require.Len(t, f.issued, n, "nothing issued")
	before, err := os.ReadFile(viewerConf)
	require.NoError(t, err)
	r = admin("credential", "create", "ci-bot", "--role", "viewer", "--out", viewerConf, "--force", "-o", "json")
	require.Equal(t, 0, r.code, r.stderr)
	after, err := os.ReadFile(viewerConf)
	require.NoError(t, err)
	require.NotEqual(t, string(before), string(after), "replaced with --force")
	var obj map[string]any
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &obj))
	require.Equal(t, []string{"expiresAt", "issuedAt", "issuedBy", "name", "revoked", "role", "serial"}, keys(obj))
	require.Equal(t, "ci-bot", obj["name"])
	require.Equal(t, "admin (admin)", obj["issuedBy"])

	// get credentials: table, json, by name or serial.
	r = admin("get", "credentials")
	require.Equal(t, 0, r.code, r.stderr)
	lines := splitLines(r.stdout)
	require.Len(t, lines, 4)
	require.Regexp(t, `^NAME\s+ROLE\s+SERIAL\s+EXPIRES\s+REVOKED\s+ISSUED-BY$`, lines[0])
	require.Regexp(t, `^alice\s+operator\s+[0-9a-f]+\s+in (\d+m|1h)\s+no\s+admin \(admin\)$`, lines[1])
	require.Regexp(t, `^ci-bot\s+viewer\s+[0-9a-f]+\s+in (\d+m|1h)\s+no\s+admin \(admin\)$`, lines[2])
	require.Regexp(t, `^ci-bot\s+viewer\s+`+obj["serial"].(string)+`\s+`, lines[3], "oldest first within a name")
	r = admin("get", "cred", obj["serial"].(string), "-o", "json")
	require.Equal(t, 0, r.code, r.stderr)
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &list))
	require.Len(t, list, 1)
	require.Equal(t, obj["serial"], list[0]["serial"])
	r = admin("get", "credential", "nobody")
	require.Equal(t, 1, r.code)
	require.Equal(t, "error: credential \"nobody\" not found (tendctl get credentials lists them)\n", r.stderr)

	// delete credential revokes every credential of that name; the viewer
	// is refused from then on, and told why.
	r = admin("delete", "credential", "ci-bot")
	require.Equal(t, 0, r.code, r.stderr)
	require.Regexp(t, `^credential/ci-bot revoked \(serial [0-9a-f]+, role viewer\): its certificate is refused from now on\n`+
		`credential/ci-bot revoked \(serial `+obj["serial"].(string)+`, role viewer\): its certificate is refused from now on\n$`, r.stdout)
	r = viewer("get", "agents")
	require.Equal(t, 1, r.code)
	require.Equal(t, "error: permission denied: credential ci-bot (serial "+obj["serial"].(string)+") was revoked ("+viewerConf+
		" holds a revoked credential: ask an admin for a new one)\n", r.stderr)
	r = admin("delete", "credential/nobody")
	require.Equal(t, 1, r.code)
	require.Equal(t, "error: no credential named or with serial \"nobody\" (see tendctl get credentials)\n", r.stderr)
}

func TestKeys(t *testing.T) {
	f, conf := startFake(t)
	cli := func(args ...string) cliResult {
		t.Helper()
		return runCLI(t, nil, "", append([]string{"--config", conf}, args...)...)
	}
	const old = "1a2b3c4d5e6f7081"
	const next = "00000000000000b1"
	f.mu.Lock()
	f.keys = []*adminv1.SigningKeyInfo{{KeyId: old, State: "active", CreatedAt: timestamppb.New(time.Now().Add(-30 * 24 * time.Hour)), AgentsHolding: 20, AgentsTotal: 20}}
	f.mu.Unlock()

	r := cli("get", "keys")
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, []string{
		"KEY-ID             STATE    CREATED   AGENTS",
		"1a2b3c4d5e6f7081   active   30d ago   20/20",
	}, splitLines(r.stdout))

	// 1. rotate
	r = cli("keys", "rotate")
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, "signing key "+next+" created and published (held by 0/20 agents so far); the active key "+old+" keeps signing\n"+
		"next: wait until tendctl get keys shows 20/20 agents holding "+next+", then: tendctl keys activate "+next+"\n", r.stdout)

	// 2. activate: refused while agents miss the key.
	r = cli("keys", "activate", next)
	require.Equal(t, 1, r.code)
	require.Equal(t, "error: signing key "+next+": 20 agents have not reported holding it yet (their tasks would be rejected); wait until `tendctl get keys` shows every agent, or use --force: signing key in the wrong state\n", r.stderr)
	f.mu.Lock()
	f.keys[1].AgentsHolding = 18
	f.mu.Unlock()
	r = cli("get", "key", next, "-o", "json")
	require.Equal(t, 0, r.code, r.stderr)
	var list []map[string]any
	require.NoError(t, json.Unmarshal([]byte(r.stdout), &list))
	require.Len(t, list, 1)
	require.Equal(t, []string{"agentsHolding", "agentsTotal", "createdAt", "keyId", "state"}, keys(list[0]))
	require.Equal(t, "published", list[0]["state"])
	require.EqualValues(t, 18, list[0]["agentsHolding"])

	r = cli("keys", "activate", next, "--force")
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, "warning: 2 of 20 agents have not reported holding "+next+": their tasks are rejected until they do\n", r.stderr)
	lines := splitLines(r.stdout)
	require.Len(t, lines, 2)
	require.Equal(t, "signing key "+next+" activated: new tasks are signed with it; "+old+" stays published, so the tasks it signed stay valid", lines[0])
	require.Regexp(t, `^next: after `+old+`'s last tasks have expired \(task TTL 60s \+ 45s margin: from \d\d:\d\d:\d\d\), run: tendctl keys retire `+old+`$`, lines[1])
	r = cli("keys", "activate", next)
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, "signing key "+next+" is already active: nothing changed\n", r.stdout)

	// 3. retire
	r = cli("keys", "retire", next)
	require.Equal(t, 1, r.code)
	require.Equal(t, "error: signing key "+next+" is the active key: activate another one first: signing key in the wrong state\n", r.stderr)
	r = cli("keys", "retire", old)
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, "signing key "+old+" retired: agents drop it and refuse tasks signed with it from now on\n"+
		"rotation complete: "+next+" is the only key agents accept (tendctl get keys)\n", r.stdout)
	r = cli("keys", "retire", old)
	require.Equal(t, 0, r.code, r.stderr)
	require.Equal(t, "signing key "+old+" is already retired: nothing changed\n", r.stdout)
	r = cli("keys", "retire", "ffff")
	require.Equal(t, 1, r.code)
	require.Equal(t, "error: signing key \"ffff\": no such signing key\n", r.stderr)

	r = cli("get", "keys")
	require.Equal(t, 0, r.code, r.stderr)
	lines = splitLines(r.stdout)
	require.Len(t, lines, 3)
	require.Regexp(t, `^`+old+`\s+retired\s+30d ago\s+20/20$`, lines[1])
	require.Regexp(t, `^`+next+`\s+active\s+\d+s ago\s+18/20$`, lines[2])
	r = cli("get", "keys", "nope")
	require.Equal(t, 1, r.code)
	require.Equal(t, "error: signing key \"nope\" not found (tendctl get keys lists them)\n", r.stderr)

	// A rotation left half done: retire names what is still published.
	r = cli("keys", "rotate")
	require.Equal(t, 0, r.code, r.stderr)
	r = cli("keys", "rotate")
	require.Equal(t, 0, r.code, r.stderr)
	r = cli("keys", "retire", "00000000000000b2")
	require.Equal(t, 0, r.code, r.stderr)
	require.Contains(t, r.stdout, "next: still published besides the active key "+next+": 00000000000000b3 (activate it, or retire it once it no longer signs)\n")
}

// TestMethodRolesMatchControlPlane keeps tendctl's table of who may call
// what (for messages) equal to the control plane's access policy.
func TestMethodRolesMatchControlPlane(t *testing.T) {
	const prefix = "/tend.admin.v1.AdminService/"
	n := 0
	for method, roles := range api.MethodRoles {
		if !strings.HasPrefix(method, prefix) {
			continue
		}
		n++
		require.Equal(t, roles, methodRoles[strings.TrimPrefix(method, prefix)], method)
	}
	require.Len(t, methodRoles, n)
}
