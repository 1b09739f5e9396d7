package main

import (
	"fmt"

	"github.com/spf13/cobra"

	adminv1 "tend.dev/tend/proto/tend/admin/v1"
)

func newDeleteCmd(a *app) *cobra.Command {
	return &cobra.Command{
		Use:   "delete (policy|agent|credential) NAME",
		Short: "Delete a policy, or revoke an agent or a credential",
		Long: `Delete a policy (its check stops on every agent), or delete an agent: the
agent is revoked, its certificate is refused from then on and its id is never
reused. Enroll the host again with a new join token to bring it back.

delete credential NAME|SERIAL revokes an admin API credential: every
credential with that name, or the one with that serial (tendctl get
credentials lists them). Its certificate is refused from the next call on.`,
		Example: `  tendctl delete policy web-nginx-down
  tendctl delete agent web-1
  tendctl delete agent/web-1
  tendctl delete credential alice
  tendctl delete credential 5c1f9a0e4b7d2c3a8e6f1b0d9c4a7e21`,
		RunE: func(cmd *cobra.Command, args []string) error {
			res, names, err := parseResource(cmd, args, resPolicies, resAgents, resCredentials)
			if err != nil {
				return err
			}
			if len(names) != 1 {
				return usageErrorf(cmd, "delete takes exactly one NAME, got %d", len(names))
			}
			name := names[0]
			switch res {
			case resPolicies:
				if _, err := call(cmd.Context(), a, adminv1.AdminServiceClient.DeletePolicy, &adminv1.DeletePolicyRequest{Name: name}); err != nil {
					return err
				}
				fmt.Fprintf(a.stdout, "policy/%s deleted\n", name)
			case resCredentials:
				resp, err := call(cmd.Context(), a, adminv1.AdminServiceClient.RevokeCredential, &adminv1.RevokeCredentialRequest{Name: name})
				if err != nil {
					return err
				}
				for _, c := range resp.GetRevoked() {
					fmt.Fprintf(a.stdout, "credential/%s revoked (serial %s, role %s): its certificate is refused from now on\n", c.GetName(), c.GetSerial(), c.GetRole())
				}
			default:
				resp, err := call(cmd.Context(), a, adminv1.AdminServiceClient.DeleteAgent, &adminv1.DeleteAgentRequest{Name: name})
				if err != nil {
					return err
				}
				if n := resp.GetAgent().GetName(); n != "" {
					name = n
				}
				fmt.Fprintf(a.stdout, "agent/%s deleted (revoked: its certificate is refused from now on)\n", name)
			}
			return nil
		},
	}
}
