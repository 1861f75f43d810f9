// Command generate makes an image through a comfyui-grpc gateway, prints its
// progress and saves the outputs (read through ReadArtifact, sha256-checked).
//
//	generate [-target HOST:PORT] [-size 512] [-steps 20] [-out DIR] "a prompt"
//
// It shows the two things every Go caller needs: a request_id so a retried
// Generate never makes a second job, and a progress stream that resumes after
// a dropped connection with after_sequence.
package main

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	v1 "comfyuigrpc/v1"
)

func main() {
	target := flag.String("target", envOr("COMFYUI_GRPC_TARGET", "localhost:50051"), "gateway HOST:PORT")
	caCert := flag.String("ca-cert", os.Getenv("COMFYUI_GRPC_CA_CERT"), "PEM CA to trust (turns on TLS)")
	size := flag.Uint("size", 512, "image width and height")
	steps := flag.Uint("steps", 20, "sampling steps")
	out := flag.String("out", ".", "directory for the outputs")
	flag.Parse()
	prompt := strings.Join(flag.Args(), " ")
	if prompt == "" {
		fmt.Fprintln(os.Stderr, `usage: generate [-target HOST:PORT] [-size N] [-steps N] [-out DIR] "a prompt"`)
		os.Exit(2)
	}
	if err := run(*target, *caCert, prompt, uint32(*size), uint32(*steps), *out); err != nil {
		fmt.Fprintln(os.Stderr, "error:", describe(err))
		os.Exit(1)
	}
}

func envOr(name, fallback string) string {
	if value := os.Getenv(name); value != "" {
		return value
	}
	return fallback
}

func run(target, caCert, prompt string, size, steps uint32, out string) error {
	security, err := transportOption(caCert)
	if err != nil {
		return err
	}
	conn, err := grpc.Dial(target, security)
	if err != nil {
		return err
	}
	defer conn.Close()
	client := v1.NewGenerationServiceClient(conn)
	ctx := context.Background()
	if token := os.Getenv("COMFYUI_GRPC_TOKEN"); token != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	}

	request := &v1.GenerateRequest{
		Input: &v1.GenerateRequest_TextToImage{TextToImage: &v1.TextToImage{
			Prompt: prompt, Width: size, Height: size, Steps: steps,
		}},
		RequestId: fmt.Sprintf("go-%d", time.Now().UnixNano()),
	}
	var submitted *v1.GenerateResponse
	err = retry(func() error {
		call, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		submitted, err = client.Generate(call, request)
		return err
	})
	if err != nil {
		return err
	}
	fmt.Fprintln(os.Stderr, "job", submitted.JobId)

	if err := follow(ctx, client, submitted.JobId); err != nil {
		return err
	}

	call, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	result, err := client.GetResult(call, &v1.GetResultRequest{
		JobId: submitted.JobId, WaitTimeout: durationpb.New(60 * time.Second),
	})
	if err != nil {
		return err
	}
	job := result.Job
	if job.State != v1.JobState_JOB_STATE_SUCCEEDED {
		return fmt.Errorf("job %s ended %s: %s", job.JobId, job.State, job.GetError().GetMessage())
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for _, artifact := range job.Artifacts {
		path, err := save(ctx, client, job.JobId, artifact, out)
		if err != nil {
			return err
		}
		fmt.Printf("%s  key=%s  %s  %d bytes\n", path, artifact.Key, artifact.ContentType, artifact.SizeBytes)
	}
	return nil
}

// transportOption is plaintext (a local or sidecar-terminated gateway) unless
// a CA is given or COMFYUI_GRPC_TLS=1.
func transportOption(caCert string) (grpc.DialOption, error) {
	if caCert == "" && os.Getenv("COMFYUI_GRPC_TLS") != "1" {
		return grpc.WithInsecure(), nil
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if caCert != "" {
		pem, err := os.ReadFile(caCert)
		if err != nil {
			return nil, err
		}
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s holds no PEM certificate", caCert)
		}
	}
	return grpc.WithTransportCredentials(credentials.NewClientTLSFromCert(pool, "")), nil
}

// follow prints progress until the job's final event. A dropped stream is
// opened again after the last sequence seen, so no event is missed or repeated.
func follow(ctx context.Context, client v1.GenerationServiceClient, jobID string) error {
	last := uint32(0) // after_sequence 0 replays the job from its start
	failures := 0
	for {
		stream, err := client.StreamProgress(ctx, &v1.StreamProgressRequest{JobId: jobID, AfterSequence: &last})
		for err == nil {
			var event *v1.ProgressEvent
			event, err = stream.Recv()
			if err != nil {
				break
			}
			if event.GetSnapshot() != nil {
				continue // the replay that follows tells the story from the start
			}
			if event.Sequence <= last {
				continue
			}
			last = event.Sequence
			failures = 0
			show(event)
			switch event.Event.(type) {
			case *v1.ProgressEvent_Succeeded, *v1.ProgressEvent_Failed, *v1.ProgressEvent_Cancelled:
				return nil
			}
		}
		if errors.Is(err, io.EOF) {
			err = status.Error(codes.Unavailable, "the stream ended before the job finished")
		}
		failures++
		if !retryable(err) || failures >= 5 {
			return err
		}
		time.Sleep(time.Duration(failures) * 200 * time.Millisecond)
	}
}

func show(event *v1.ProgressEvent) {
	state := strings.ToLower(strings.TrimPrefix(event.State.String(), "JOB_STATE_"))
	switch e := event.Event.(type) {
	case *v1.ProgressEvent_NodeProgress:
		p := e.NodeProgress
		fmt.Fprintf(os.Stderr, "%3.0f%% %s node %s %s %d/%d\n", p.JobFraction*100, state, p.NodeId, p.ClassType, p.Value, p.Max)
	case *v1.ProgressEvent_NodeStarted:
		fmt.Fprintf(os.Stderr, "     %s node %s %s\n", state, e.NodeStarted.NodeId, e.NodeStarted.ClassType)
	case *v1.ProgressEvent_Succeeded:
		fmt.Fprintf(os.Stderr, "100%% %s\n", state)
	case *v1.ProgressEvent_Failed:
		fmt.Fprintf(os.Stderr, "     %s %s: %s\n", state, e.Failed.GetError().GetReason(), e.Failed.GetError().GetMessage())
	case *v1.ProgressEvent_Queued, *v1.ProgressEvent_Started, *v1.ProgressEvent_Uploading, *v1.ProgressEvent_Cancelled:
		fmt.Fprintf(os.Stderr, "     %s\n", state)
	}
}

func save(ctx context.Context, client v1.GenerationServiceClient, jobID string, artifact *v1.Artifact, dir string) (string, error) {
	stream, err := client.ReadArtifact(ctx, &v1.ReadArtifactRequest{JobId: jobID, Artifact: artifact.Key})
	if err != nil {
		return "", err
	}
	digest := sha256.New()
	var data []byte
	for {
		message, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return "", err
		}
		digest.Write(message.Chunk)
		data = append(data, message.Chunk...)
	}
	if sum := hex.EncodeToString(digest.Sum(nil)); sum != artifact.Sha256 {
		return "", fmt.Errorf("artifact %s: sha256 %s, expected %s", artifact.Key, sum, artifact.Sha256)
	}
	// JOBID8-name, numbered when taken: a second run never replaces the first's files.
	return saveNew(dir, jobID, artifact.Filename, data)
}

// retryable: the gateway did not answer (unreachable or draining, or a
// stopping replica cancelled a call it had not begun; this program never
// cancels its own calls).
func retryable(err error) bool {
	code := status.Code(err)
	return code == codes.Unavailable || code == codes.Canceled
}

// retry runs call again while it is retryable; safe for Generate because
// the request_id stays the same.
func retry(call func() error) error {
	var err error
	for attempt := 1; attempt <= 5; attempt++ {
		if err = call(); !retryable(err) {
			return err
		}
		time.Sleep(time.Duration(attempt) * 200 * time.Millisecond)
	}
	return err
}

// describe turns a gRPC error into one line with the gateway's reason and
// field violations (sent as google.rpc details).
func describe(err error) string {
	st, ok := status.FromError(err)
	if !ok {
		return err.Error()
	}
	text := fmt.Sprintf("%s: %s", st.Code(), st.Message())
	for _, detail := range st.Details() {
		switch d := detail.(type) {
		case *errdetails.ErrorInfo:
			text += fmt.Sprintf(" (reason %s)", d.Reason)
		case *errdetails.BadRequest:
			for _, v := range d.FieldViolations {
				text += fmt.Sprintf(" [%s: %s]", v.Field, v.Description)
			}
		}
	}
	return text
}
