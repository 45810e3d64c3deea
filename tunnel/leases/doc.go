// Package leases is the contract between proxy-server and proxy-agent about
// coordination.k8s.io/v1 Leases, with ANP v0.36.0's semantics, and both of
// its sides:
//
//   - the server's Controller (pkg/server/leases in ANP) publishes the
//     server's lease and renews it every RenewInterval, culls the expired
//     leases of servers that went away, and deletes its own lease on a
//     graceful stop (Release);
//   - the agent's Counter (pkg/agent/lease_counter.go in ANP, for
//     --count-server-leases) counts the servers as the valid leases that
//     match its selector, and 1 when there is none.
//
// The contract: a server's lease is named "konnectivity-proxy-server-<server
// id>", held by the server id and labelled with --lease-label; it is valid
// until renewTime (acquireTime when never renewed) plus
// leaseDurationSeconds. A lease missing those fields is never valid.
//
// Every GCInterval the Controller lists the leases with its labels and
// deletes each expired one under a resourceVersion precondition, so a lease
// renewed between the list and the delete is kept.
//
// Unlike ANP's agent, which lists every lease of the namespace into an
// informer and filters on read, the Counter lists and watches only the
// matching leases (kube-apiserver applies the selector), and it re-counts
// at the moment the earliest valid lease expires, so a server that died
// without deleting its lease stops being counted without any API event.
package leases
