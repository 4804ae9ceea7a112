// The sign-in form: POST /api/auth/token, keep the token for this tab, then carry on.

import { ApiError, requestToken } from './api';
import { storeToken } from './auth';
import { errorText, h } from './ui';

/** Show the sign-in form in `main`; `onSignedIn` runs once a token is stored. */
export function showSignIn(main: HTMLElement, onSignedIn: () => void): void {
  const username = h('input', { id: 'username', name: 'username', autocomplete: 'username',
    required: true });
  const password = h('input', { id: 'password', name: 'password', type: 'password',
    autocomplete: 'current-password', required: true });
  const error = h('p', { class: 'error', 'data-testid': 'sign-in-error', role: 'alert',
    hidden: true });
  const button = h('button', { type: 'submit', 'data-testid': 'sign-in' }, 'Sign in');
  const form = h('form', { class: 'panel sign-in', novalidate: true },
    h('h1', {}, 'Sign in to radcloud'),
    h('label', { for: 'username' }, 'User name'), username,
    h('label', { for: 'password' }, 'Password'), password,
    error, button);
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    void submit();
  });

  async function submit(): Promise<void> {
    error.hidden = true;
    if (!username.value.trim() || !password.value) {
      error.textContent = 'Enter your user name and password.';
      error.hidden = false;
      return;
    }
    button.disabled = true;
    try {
      const answer = await requestToken(username.value.trim(), password.value);
      storeToken(answer.access_token, answer.expires_in);
      onSignedIn();
    } catch (failure) {
      error.textContent = failure instanceof ApiError && failure.unauthorized
        ? `Sign-in refused: ${errorText(failure)}`
        : errorText(failure);
      error.hidden = false;
      password.select();
    } finally {
      button.disabled = false;
    }
  }

  main.replaceChildren(form);
  username.focus();
}
