package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/durationpb"

	"tend.dev/tend/internal/adminconf"
	"tend.dev/tend/internal/pki"
	adminv1 "tend.dev/tend/proto/tend/admin/v1"
)

// credentialRoles are the roles of admin API credentials, least first.
var credentialRoles = []string{"viewer", "operator", "admin"}

// credentialObject is one admin API credential (`get credentials`).
type credentialObject struct {
	Name      string     `json:"name"`
	Role      string     `json:"role"` // viewer | operator | admin
	Serial    string     `json:"serial"`
	IssuedAt  *time.Time `json:"issuedAt"`
	ExpiresAt *time.Time `json:"expiresAt"`
	IssuedBy  string     `json:"issuedBy"`
	Revoked   bool       `json:"revoked"`
}

func toCredentialObject(c *adminv1.Credential) credentialObject {
	return credentialObject{
		Name: c.GetName(), Role: c.GetRole(), Serial: c.GetSerial(), IssuedAt: timePtr(c.GetIssuedAt()),
		ExpiresAt: timePtr(c.GetExpiresAt()), IssuedBy: c.GetIssuedBy(), Revoked: c.GetRevoked(),
	}
}

// getCredentials lists credentials sorted by name then issue time; names
// filter by name or serial.
func getCredentials(ctx context.Context, a *app, names []string) ([]credentialObject, error) {
	resp, err := call(ctx, a, adminv1.AdminServiceClient.ListCredentials, &adminv1.ListCredentialsRequest{})
	if err != nil {
		return nil, err
	}
	objs := make([]credentialObject, 0, len(resp.GetCredentials()))
	for _, c := range resp.GetCredentials() {
		objs = append(objs, toCredentialObject(c))
	}
	sort.SliceStable(objs, func(i, j int) bool {
		if objs[i].Name != objs[j].Name {
			return objs[i].Name < objs[j].Name
		}
		ti, tj := objs[i].IssuedAt, objs[j].IssuedAt
		return ti != nil && (tj == nil || ti.Before(*tj))
	})
	if len(names) == 0 {
		return objs, nil
	}
	var out []credentialObject
	for _, n := range names {
		found := false
		for _, o := range objs {
			if o.Name == n || strings.EqualFold(o.Serial, n) {
				out = append(out, o)
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("credential %q not found (tendctl get credentials lists them)", n)
		}
	}
	return out, nil
}

func credentialTable(w io.Writer, now time.Time, objs []credentialObject) {
	fmt.Fprintln(w, "NAME\tROLE\tSERIAL\tEXPIRES\tREVOKED\tISSUED-BY")
	for _, o := range objs {
		revoked := "no"
		if o.Revoked {
			revoked = "yes"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\n", o.Name, o.Role, o.Serial, expires(now, o.ExpiresAt), revoked, dash(o.IssuedBy))
	}
}

// expires is "in 29d", or "expired 2h ago".
func expires(now time.Time, t *time.Time) string {
	switch {
	case t == nil || t.IsZero():
		return "never"
	case t.After(now):
		return "in " + humanDuration(t.Sub(now).Round(time.Minute))
	}
	return "expired " + ago(now, t)
}

func newCredentialCmd(a *app) *cobra.Command {
	cred := &cobra.Command{
		Use:     "credential",
		Aliases: []string{"credentials", "cred"},
		Short:   "Issue admin API credentials (client certificates with a role)",
		Long: `Issue credentials for the admin API: client certificates whose role is
viewer (read only), operator (read, approve tasks, re-arm policies) or admin
(everything). tendctl get credentials lists them, tendctl delete credential
revokes one.`,
		Example: `  tendctl credential create alice --role operator --out alice.conf
  tendctl get credentials
  tendctl delete credential alice`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usageErrorf(cmd, "missing subcommand (want: credential create NAME --role ROLE --out FILE)")
		},
	}
	var (
		role   string
		ttl    time.Duration
		out    string
		force  bool
		output string
	)
	create := &cobra.Command{
		Use:   "create NAME --role viewer|operator|admin --out FILE [--ttl 720h] [--force]",
		Short: "Create a credential and write a ready admin config for it",
		Long: `Create a credential for a person or a tool and write a complete admin config
(like admin.conf: server, CA, certificate and key) to FILE, with mode 0600.

The private key is generated here (ECDSA P-256) and never leaves this
machine: only a certificate request is sent, and the control plane signs
it with NAME and ROLE as the identity. The new config uses the same server
address as the config this command runs with.

FILE is not overwritten unless --force. Needs the admin role.`,
		Example: `  tendctl credential create alice --role operator --out alice.conf
  tendctl credential create grafana --role viewer --ttl 8760h --out /etc/tend/grafana.conf
  tendctl --config alice.conf get agents`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkFormat(output); err != nil {
				return usageErrorf(cmd, "-o: %v", err)
			}
			switch {
			case len(args) != 1:
				return usageErrorf(cmd, "credential create takes exactly one NAME, got %d", len(args))
			case role == "":
				return usageErrorf(cmd, "--role is required (want one of %s)", strings.Join(credentialRoles, ", "))
			case !slices.Contains(credentialRoles, role):
				return usageErrorf(cmd, "--role: unknown role %q (want one of %s)", role, strings.Join(credentialRoles, ", "))
			case ttl <= 0:
				return usageErrorf(cmd, "--ttl must be positive, got %s", ttl)
			case out == "":
				return usageErrorf(cmd, "--out FILE is required: where to write the new admin config")
			}
			name := args[0]
			if err := checkOut(out, force, a.config()); err != nil {
				return err
			}
			if _, err := a.connect(); err != nil {
				return err
			}
			key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if err != nil {
				return fmt.Errorf("generate key: %w", err)
			}
			csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
			if err != nil {
				return fmt.Errorf("create certificate request: %w", err)
			}
			resp, err := call(cmd.Context(), a, adminv1.AdminServiceClient.IssueCredential, &adminv1.IssueCredentialRequest{
				Name: name, Role: role, CsrDer: csr, Ttl: durationpb.New(ttl),
			})
			if err != nil {
				return err
			}
			c := toCredentialObject(resp.GetCredential())
			lost := func(err error) error {
				return fmt.Errorf("credential %s (serial %s) was issued but not written to %s: %w; its key is lost: revoke it with tendctl delete credential %s", name, c.Serial, out, err, c.Serial)
			}
			keyPEM, err := pki.EncodeKeyPEM(key)
			if err != nil {
				return lost(err)
			}
			if _, err := tls.X509KeyPair(resp.GetCertificatePem(), keyPEM); err != nil {
				return lost(fmt.Errorf("the control plane sent a certificate that does not match the key: %w", err))
			}
			ca := string(resp.GetCaPem())
			if ca == "" {
				ca = a.conf.CA
			}
			conf := &adminconf.Config{Server: a.conf.Server, ServerName: a.conf.ServerName, CA: ca, Cert: string(resp.GetCertificatePem()), Key: string(keyPEM)}
			if err := adminconf.Save(out, conf); err != nil {
				return lost(err)
			}
			if output != formatTable {
				return printObject(a.stdout, output, c)
			}
			exp := "never"
			if c.ExpiresAt != nil {
				exp = c.ExpiresAt.Local().Format(time.RFC3339) + " (" + expires(a.now(), c.ExpiresAt) + ")"
			}
			fmt.Fprintf(a.stdout, "credential/%s created: role %s, serial %s, expires %s\n", c.Name, c.Role, c.Serial, exp)
			fmt.Fprintf(a.stdout, "wrote %s (mode 0600, holds the private key): use it with tendctl --config %s get agents\n", out, out)
			return nil
		},
	}
	create.Flags().StringVar(&role, "role", "", "viewer, operator or admin (required)")
	create.Flags().DurationVar(&ttl, "ttl", 30*24*time.Hour, "how long the credential is valid (at most 8760h)")
	create.Flags().StringVar(&out, "out", "", "file to write the new admin config to (required)")
	create.Flags().BoolVar(&force, "force", false, "overwrite --out if it exists")
	create.Flags().StringVarP(&output, "output", "o", formatTable, "output format: table (a sentence), json or yaml (the credential, without key)")
	cred.AddCommand(create)
	return cred
}

// checkOut refuses an --out that exists (unless force), is a directory, is
// the config this command runs with, or whose directory does not exist;
// before anything is issued.
func checkOut(out string, force bool, config string) error {
	st, err := os.Stat(out)
	switch {
	case err == nil && st.IsDir():
		return fmt.Errorf("--out %s is a directory: give a file name", out)
	case err == nil:
		if cst, cerr := os.Stat(config); cerr == nil && os.SameFile(st, cst) {
			return fmt.Errorf("--out %s is the admin config this command runs with (%s): write the new credential to another file", out, config)
		}
		if !force {
			return fmt.Errorf("%s already exists: not overwritten (use another --out, or --force to replace it)", out)
		}
	case !errors.Is(err, os.ErrNotExist):
		return fmt.Errorf("--out: %w", err)
	default:
		dir := filepath.Dir(out)
		if dst, err := os.Stat(dir); err != nil || !dst.IsDir() {
			return fmt.Errorf("--out %s: directory %s does not exist", out, dir)
		}
	}
	return nil
}
