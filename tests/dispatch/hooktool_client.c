/* A stub Juju hook tool as a thin client, the way Juju's own `jujuc` is one.
 *
 * Juju's hook tools (is-leader, relation-get, status-set, ...) are one small compiled binary that
 * forwards its name, arguments and the hook's JUJU_* variables to the unit agent over a socket and
 * prints the agent's answer. This is the same for the dispatch smoke test and benchmark: every
 * tool name on PATH is a symlink to this program; tests/dispatch/agent.py answers on the unix
 * socket named by HOOKTOOLS_SOCKET, running the tool in tests/dispatch/hooktool.py against the
 * unit's JSON state file.
 *
 * Request (client -> agent), NUL-terminated strings:
 *     tool name, arguments..., "" ; JUJU_* environment entries "K=V"..., "" ; then, for
 *     relation-set only, this process's stdin (its `--file -`); then the client shuts down writing.
 * Answer (agent -> client): "<exit code> <stdout bytes> <stderr bytes>\n", stdout, stderr.
 *
 * Built by tests/dispatch/charmdir.py with `cc -O2`; without a C compiler the tools fall back to
 * running hooktool.py with Python for each call (slower, same behaviour).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

extern char **environ;

static void fail(const char *what) {
    fprintf(stderr, "ERROR stub hook tool: %s\n", what);
    exit(1);
}

static void send_all(int fd, const char *data, size_t size) {
    while (size > 0) {
        ssize_t sent = write(fd, data, size);
        if (sent <= 0) fail("cannot write to the agent socket");
        data += sent;
        size -= (size_t)sent;
    }
}

static void send_string(int fd, const char *text) { send_all(fd, text, strlen(text) + 1); }

/* Read `fd` to its end into a growing buffer; return the buffer and its size in *size. */
static char *read_all(int fd, size_t *size) {
    size_t capacity = 4096, used = 0;
    char *buffer = malloc(capacity + 1);
    for (;;) {
        if (buffer == NULL) fail("out of memory");
        ssize_t got = read(fd, buffer + used, capacity - used);
        if (got < 0) fail("cannot read");
        if (got == 0) break;
        used += (size_t)got;
        if (used == capacity) buffer = realloc(buffer, (capacity *= 2) + 1);
    }
    buffer[used] = '\0';
    *size = used;
    return buffer;
}

int main(int argc, char **argv) {
    const char *path = getenv("HOOKTOOLS_SOCKET");
    struct sockaddr_un address = {.sun_family = AF_UNIX};
    if (path == NULL || strlen(path) >= sizeof address.sun_path) fail("HOOKTOOLS_SOCKET unset");
    strcpy(address.sun_path, path);
    int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof address) < 0)
        fail("cannot connect to the agent (HOOKTOOLS_SOCKET)");

    const char *name = strrchr(argv[0], '/');
    name = name ? name + 1 : argv[0];
    for (int i = 0; i < argc; i++) send_string(fd, i == 0 ? name : argv[i]);
    send_string(fd, "");
    for (char **entry = environ; *entry != NULL; entry++)
        if (strncmp(*entry, "JUJU_", 5) == 0) send_string(fd, *entry);
    send_string(fd, "");
    if (strcmp(name, "relation-set") == 0) {
        size_t size;
        char *input = read_all(STDIN_FILENO, &size);
        send_all(fd, input, size);
        free(input);
    }
    shutdown(fd, SHUT_WR);

    size_t size;
    char *answer = read_all(fd, &size);
    int code;
    size_t out_size, err_size, header;
    char *newline = memchr(answer, '\n', size);
    if (newline == NULL || sscanf(answer, "%d %zu %zu", &code, &out_size, &err_size) != 3)
        fail("malformed answer from the agent");
    header = (size_t)(newline - answer) + 1;
    if (header + out_size + err_size != size) fail("truncated answer from the agent");
    fwrite(answer + header, 1, out_size, stdout);
    fwrite(answer + header + out_size, 1, err_size, stderr);
    return code;
}
