/* The pod sandbox's first process: it holds the pod's namespaces open, does nothing else, reaps
 * any child that gets reparented to it (it is PID 1 of a shared PID namespace) and exits on
 * SIGTERM or SIGINT. Built statically so the image needs no libc. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int signo) {
  (void)signo;
  _exit(0);
}

static void reap(int signo) {
  (void)signo;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

static void on(int signo, void (*handler)(int)) {
  struct sigaction action = {.sa_handler = handler, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
  sigemptyset(&action.sa_mask);
  if (sigaction(signo, &action, NULL) < 0) exit(1);
}

int main(void) {
  on(SIGTERM, stop);
  on(SIGINT, stop);
  on(SIGCHLD, reap);
  for (;;) pause();
}
