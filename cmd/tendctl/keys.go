package main

import (
	"context"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	adminv1 "tend.dev/tend/proto/tend/admin/v1"
)

// Key states.
const (
	keyActive    = "active"
	keyPublished = "published"
	keyRetired   = "retired"
)

// retireAfter is how long after an activation the previous key may still
// have signed a task that an agent accepts: the control plane's task TTL
// (60 s) plus the margin it gives the agent's clock-skew allowance (45 s).
const retireAfter = 60*time.Second + 45*time.Second

// keyObject is one task-signing key (`get keys`).
type keyObject struct {
	KeyID         string     `json:"keyId"`
	State         string     `json:"state"` // active | published | retired
	CreatedAt     *time.Time `json:"createdAt"`
	AgentsHolding uint32     `json:"agentsHolding"`
	AgentsTotal   uint32     `json:"agentsTotal"`
}

func toKeyObject(k *adminv1.SigningKeyInfo) keyObject {
	return keyObject{KeyID: k.GetKeyId(), State: k.GetState(), CreatedAt: timePtr(k.GetCreatedAt()), AgentsHolding: k.GetAgentsHolding(), AgentsTotal: k.GetAgentsTotal()}
}

// agents is "18/20": agents holding the key, of all enrolled.
func (k keyObject) agents() string { return fmt.Sprintf("%d/%d", k.AgentsHolding, k.AgentsTotal) }

// getKeys lists the signing keys, oldest first; ids filter.
func getKeys(ctx context.Context, a *app, ids []string) ([]keyObject, error) {
	resp, err := call(ctx, a, adminv1.AdminServiceClient.ListSigningKeys, &adminv1.ListSigningKeysRequest{})
	if err != nil {
		return nil, err
	}
	objs := make([]keyObject, 0, len(resp.GetKeys()))
	for _, k := range resp.GetKeys() {
		objs = append(objs, toKeyObject(k))
	}
	if len(ids) == 0 {
		return objs, nil
	}
	var out []keyObject
	for _, id := range ids {
		i := slices.IndexFunc(objs, func(o keyObject) bool { return o.KeyID == id })
		if i < 0 {
			return nil, fmt.Errorf("signing key %q not found (tendctl get keys lists them)", id)
		}
		out = append(out, objs[i])
	}
	return out, nil
}

func keyTable(w io.Writer, now time.Time, objs []keyObject) {
	fmt.Fprintln(w, "KEY-ID\tSTATE\tCREATED\tAGENTS")
	for _, o := range objs {
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\n", o.KeyID, o.State, ago(now, o.CreatedAt), o.agents())
	}
}

// findKey returns the key with that id, or the first in that state.
func findKey(objs []keyObject, match func(keyObject) bool) (keyObject, bool) {
	i := slices.IndexFunc(objs, match)
	if i < 0 {
		return keyObject{}, false
	}
	return objs[i], true
}

func newKeysCmd(a *app) *cobra.Command {
	keys := &cobra.Command{
		Use:     "keys",
		Aliases: []string{"key"},
		Short:   "Rotate the control plane's task-signing key",
		Long: `Rotate the key that signs remediation tasks, with an overlap so that no agent
ever sees a task signed with a key it does not hold:

  1. tendctl keys rotate            a new key is created and published: agents
                                    receive it, the active key keeps signing
  2. tendctl get keys               wait until every agent holds the new key
                                    (AGENTS shows 20/20)
  3. tendctl keys activate NEW-ID   the new key signs from now on; the old one
                                    stays published, its tasks stay valid
  4. tendctl keys retire OLD-ID     once the old key's last tasks have expired
                                    (task TTL 60s + 45s margin): agents drop it

tendctl get keys is open to every role; the rest needs the admin role.`,
		Example: `  tendctl keys rotate
  tendctl get keys
  tendctl keys activate 9f2c4e1a7b3d5f60
  tendctl keys retire 1a2b3c4d5e6f7081`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return usageErrorf(cmd, "missing subcommand (want: keys rotate, keys activate KEY-ID, keys retire KEY-ID)")
		},
	}

	rotate := &cobra.Command{
		Use:     "rotate",
		Short:   "Create a new task-signing key and publish it to the agents",
		Long:    "Create a new task-signing key and publish it: connected agents receive it at once,\nthe others when they reconnect or renew. The active key keeps signing until\ntendctl keys activate.",
		Example: `  tendctl keys rotate`,
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := call(cmd.Context(), a, adminv1.AdminServiceClient.RotateSigningKey, &adminv1.RotateSigningKeyRequest{})
			if err != nil {
				return err
			}
			k := toKeyObject(resp.GetKey())
			signing := "the active key keeps signing"
			if all, err := getKeys(cmd.Context(), a, nil); err == nil {
				if act, ok := findKey(all, func(o keyObject) bool { return o.State == keyActive }); ok {
					signing = "the active key " + act.KeyID + " keeps signing"
				}
			}
			fmt.Fprintf(a.stdout, "signing key %s created and published (held by %s agents so far); %s\n", k.KeyID, k.agents(), signing)
			if k.AgentsTotal == 0 {
				fmt.Fprintf(a.stdout, "next: no agent is enrolled, so nothing to wait for: tendctl keys activate %s\n", k.KeyID)
				return nil
			}
			fmt.Fprintf(a.stdout, "next: wait until tendctl get keys shows %d/%d agents holding %s, then: tendctl keys activate %s\n", k.AgentsTotal, k.AgentsTotal, k.KeyID, k.KeyID)
			return nil
		},
	}

	var force bool
	activate := &cobra.Command{
		Use:   "activate KEY-ID [--force]",
		Short: "Make a published key the one that signs tasks",
		Long: `Make a published key the one that signs tasks. It is refused while some agent
has not reported holding the key (its tasks would be rejected); --force
activates anyway. The previous key stays published, so the tasks it signed
stay valid until they expire.`,
		Example: `  tendctl keys activate 9f2c4e1a7b3d5f60`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageErrorf(cmd, "keys activate takes exactly one KEY-ID, got %d (tendctl get keys lists them)", len(args))
			}
			id := args[0]
			before, err := getKeys(cmd.Context(), a, nil)
			if err != nil {
				return err
			}
			old, hadActive := findKey(before, func(o keyObject) bool { return o.State == keyActive })
			if hadActive && old.KeyID == id {
				fmt.Fprintf(a.stdout, "signing key %s is already active: nothing changed\n", id)
				return nil
			}
			resp, err := call(cmd.Context(), a, adminv1.AdminServiceClient.ActivateSigningKey, &adminv1.ActivateSigningKeyRequest{KeyId: id, Force: force})
			if err != nil {
				return err
			}
			k := toKeyObject(resp.GetKey())
			if k.AgentsHolding < k.AgentsTotal {
				missing := k.AgentsTotal - k.AgentsHolding
				fmt.Fprintf(a.stderr, "warning: %d of %d agents have not reported holding %s: their tasks are rejected until they do\n", missing, k.AgentsTotal, k.KeyID)
			}
			if !hadActive {
				fmt.Fprintf(a.stdout, "signing key %s activated: new tasks are signed with it\n", k.KeyID)
				return nil
			}
			fmt.Fprintf(a.stdout, "signing key %s activated: new tasks are signed with it; %s stays published, so the tasks it signed stay valid\n", k.KeyID, old.KeyID)
			at := a.now().Add(retireAfter)
			fmt.Fprintf(a.stdout, "next: after %s's last tasks have expired (task TTL 60s + 45s margin: from %s), run: tendctl keys retire %s\n", old.KeyID, at.Local().Format("15:04:05"), old.KeyID)
			return nil
		},
	}
	activate.Flags().BoolVar(&force, "force", false, "activate even if some agents have not reported holding the key")

	var forceRetire bool
	retire := &cobra.Command{
		Use:   "retire KEY-ID [--force]",
		Short: "Stop publishing a key that no longer signs",
		Long: `Stop publishing a key that no longer signs: agents drop it and refuse tasks
signed with it from then on. Retire the previous key only after its last
tasks have expired: 60s task TTL plus 45s margin after the new key was
activated (the control plane refuses an earlier retire unless --force). The
active key cannot be retired.`,
		Example: `  tendctl keys retire 1a2b3c4d5e6f7081`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageErrorf(cmd, "keys retire takes exactly one KEY-ID, got %d (tendctl get keys lists them)", len(args))
			}
			id := args[0]
			before, err := getKeys(cmd.Context(), a, nil)
			if err != nil {
				return err
			}
			if k, ok := findKey(before, func(o keyObject) bool { return o.KeyID == id }); ok && k.State == keyRetired {
				fmt.Fprintf(a.stdout, "signing key %s is already retired: nothing changed\n", id)
				return nil
			}
			resp, err := call(cmd.Context(), a, adminv1.AdminServiceClient.RetireSigningKey, &adminv1.RetireSigningKeyRequest{KeyId: id, Force: forceRetire})
			if err != nil {
				return err
			}
			k := toKeyObject(resp.GetKey())
			fmt.Fprintf(a.stdout, "signing key %s retired: agents drop it and refuse tasks signed with it from now on\n", k.KeyID)
			var others []string
			active := ""
			for _, o := range before {
				switch {
				case o.KeyID == k.KeyID:
				case o.State == keyActive:
					active = o.KeyID
				case o.State == keyPublished:
					others = append(others, o.KeyID)
				}
			}
			if len(others) > 0 {
				fmt.Fprintf(a.stdout, "next: still published besides the active key %s: %s (activate it, or retire it once it no longer signs)\n", active, strings.Join(others, ", "))
				return nil
			}
			fmt.Fprintf(a.stdout, "rotation complete: %s is the only key agents accept (tendctl get keys)\n", active)
			return nil
		},
	}
	retire.Flags().BoolVar(&forceRetire, "force", false, "retire even if tasks the key signed may still be in flight")
	keys.AddCommand(rotate, activate, retire)
	return keys
}
