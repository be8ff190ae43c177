/*
 * An app embedding the exitpool agent through its C library
 * (agent-ffi/include/exitpool_agent.h). tests/sdk_c.rs compiles it with the
 * system's C compiler, runs it against a real gateway and sends a customer's
 * request through it.
 *
 * Usage: embedded_agent CONFIG_JSON
 *
 * It makes the agent, starts it (it waits for consent), records the user's
 * consent, waits until the gateway has welcomed it, prints `joined: REASON`,
 * then waits for a line on standard input (the app's "stop sharing" button),
 * prints its stats as `stats: {...}`, stops and waits for the stopped state.
 * Every state change is printed as `state N: REASON`. Exit status 0 on success.
 *
 * Build (from the workspace root, after `cargo build -p exitpool-agent-ffi`):
 *   cc examples/embedded_agent.c -I agent-ffi/include \
 *      target/debug/libexitpool_agent_ffi.a -lpthread -ldl -lm -o embedded_agent
 */

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "exitpool_agent.h"

/* How long the example waits for any state before giving up. */
#define WAIT_SECONDS 20

/* The last state the callback reported, guarded by `lock`. */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t changed = PTHREAD_COND_INITIALIZER;
static int last_state = -1;
static char last_reason[512];

/* Runs on one of the SDK's threads: record the state and wake the main thread. */
static void on_state(void *user_data, int32_t state, const char *reason) {
    (void)user_data;
    pthread_mutex_lock(&lock);
    last_state = state;
    snprintf(last_reason, sizeof last_reason, "%s", reason);
    printf("state %d: %s\n", (int)state, reason);
    fflush(stdout);
    pthread_cond_broadcast(&changed);
    pthread_mutex_unlock(&lock);
}

/* Waits until the callback has reported `wanted` (or STOPPED); 0 when it did. */
static int wait_for(int wanted) {
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += WAIT_SECONDS;
    int result = 0;
    pthread_mutex_lock(&lock);
    while (last_state != wanted) {
        if (last_state == EXITPOOL_STATE_STOPPED) {
            fprintf(stderr, "embedded_agent: stopped: %s\n", last_reason);
            result = -1;
            break;
        }
        if (pthread_cond_timedwait(&changed, &lock, &deadline) == ETIMEDOUT) {
            fprintf(stderr, "embedded_agent: no state %d within %d s\n", wanted, WAIT_SECONDS);
            result = -1;
            break;
        }
    }
    pthread_mutex_unlock(&lock);
    return result;
}

/* Prints a failed call's code and message, and frees the message. */
static int failed(const char *what, int32_t code, char *error) {
    fprintf(stderr, "embedded_agent: %s: error %d: %s\n", what, (int)code, error ? error : "");
    exitpool_string_free(error);
    return 1;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: embedded_agent CONFIG_JSON\n");
        return 2;
    }
    printf("library %s\n", exitpool_agent_version());

    ExitpoolAgent *agent = NULL;
    char *error = NULL;
    int32_t code = exitpool_agent_new(argv[1], on_state, NULL, &agent, &error);
    if (code != EXITPOOL_OK) return failed("exitpool_agent_new", code, error);

    /* Before consent the agent waits and never connects. */
    if ((code = exitpool_agent_start(agent, &error)) != EXITPOOL_OK)
        return failed("exitpool_agent_start", code, error);
    if (wait_for(EXITPOOL_STATE_WAITING_FOR_CONSENT) != 0) return 1;

    /* The app shows its terms; the user agrees. */
    char *consent = NULL;
    code = exitpool_agent_consent_record(agent, "example terms v1", &consent, &error);
    if (code != EXITPOOL_OK) return failed("exitpool_agent_consent_record", code, error);
    printf("consent: %s\n", consent);
    exitpool_string_free(consent);

    if (wait_for(EXITPOOL_STATE_JOINED) != 0) return 1;
    pthread_mutex_lock(&lock);
    printf("joined: %s\n", last_reason);
    fflush(stdout);
    pthread_mutex_unlock(&lock);

    /* Share until told to stop. */
    char line[64];
    if (fgets(line, sizeof line, stdin) == NULL) fprintf(stderr, "embedded_agent: stdin closed\n");

    char *stats = NULL;
    if ((code = exitpool_agent_stats(agent, &stats, &error)) != EXITPOOL_OK)
        return failed("exitpool_agent_stats", code, error);
    printf("stats: %s\n", stats);
    fflush(stdout);
    exitpool_string_free(stats);

    /* A bad call gets a code and a message, never a crash. */
    code = exitpool_agent_set_limits(agent, "{\"max_rate\": \"fast\"}", &error);
    printf("bad limits: error %d: %s\n", (int)code, error ? error : "");
    exitpool_string_free(error);
    error = NULL;

    if ((code = exitpool_agent_stop(agent, &error)) != EXITPOOL_OK)
        return failed("exitpool_agent_stop", code, error);
    if (wait_for(EXITPOOL_STATE_STOPPED) != 0) return 1;
    exitpool_agent_free(agent);
    printf("done\n");
    return 0;
}
