module isthmus.dev/tunnel

go 1.26.2

require (
	github.com/hashicorp/yamux v0.1.2
	github.com/spf13/pflag v1.1.0
	go.uber.org/goleak v1.3.0
	google.golang.org/grpc v1.85.0
	sigs.k8s.io/apiserver-network-proxy/konnectivity-client v0.37.0
)

require (
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sys v0.48.0 // indirect
	golang.org/x/text v0.42.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260817212433-ac3dfec99bb1 // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)
