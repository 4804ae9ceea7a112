// The index page (/app/): sign-in, then the worklist.

import './styles.css';
import { ApiError, getMe } from './api';
import { clearToken, getToken, safeNext } from './auth';
import { showSignIn } from './signin';
import { byId, errorText, renderUserBar, showAccessDenied, showBanner } from './ui';
import { WorklistPageView } from './worklist';

const main = byId('main');
const userBar = byId('user-bar');

async function start(): Promise<void> {
  if (!getToken()) {
    userBar.replaceChildren();
    showSignIn(main, () => void start());
    return;
  }
  let me;
  try {
    me = await getMe();
  } catch (error) {
    if (error instanceof ApiError && error.unauthorized) {
      clearToken();
      void start();
    } else if (error instanceof ApiError && error.forbidden) {
      showAccessDenied(main, error, null);
    } else {
      showBanner(`Cannot load your account: ${errorText(error)}`);
      window.setTimeout(() => void start(), 5000);
    }
    return;
  }
  renderUserBar(userBar, me);
  const next = safeNext(new URLSearchParams(location.search).get('next'));
  if (next) {
    location.replace(next);
    return;
  }
  await new WorklistPageView(main, me).start();
}

void start();
